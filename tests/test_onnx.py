"""ONNX export tests: logits parity with torch, dynamic axes, int8 quantisation record."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
import pytest

from training.artifacts import load_version_model
from training.errors import ExportError
from training.inference import predict
from training.onnx_export import export_version, onnx_logits, onnx_outputs, onnx_session
from training.onnx_files import find_export, read_export_record
from training.pipeline import train_model
from training.registry import ModelRegistry


@pytest.fixture
def version(tiny_csv: Path, make_config: Callable[..., Any], registry: ModelRegistry) -> Any:
    return train_model(tiny_csv, make_config(strategy="full", epochs=2), registry=registry).version


def test_export_matches_torch_and_is_recorded(version: Any) -> None:
    record = export_version(version, quantize=True)
    assert record["parity_max_abs_diff"] <= 1e-4
    assert (version.path / "onnx" / "model.onnx").is_file()
    assert read_export_record(version) == record
    int8 = record["int8"]
    assert int8["method"] == "dynamic (per-channel weights)"
    assert int8["kept"] == (int8["accuracy_change"] >= -0.01)
    assert (version.path / "onnx" / "model.int8.onnx").is_file() == int8["kept"]
    assert int8["accuracy_change"] == pytest.approx(int8["accuracy"] - record["accuracy"])


def test_int8_quantises_the_encoder_and_leaves_the_head_in_float(
    tiny_csv: Path, make_config: Callable[..., Any], registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A probe's head carries the embeddings' standardisation in its weights: int8 there put a
    # BANKING77 model at chance. Kept whatever its accuracy, so that the file can be read.
    monkeypatch.setattr("training.onnx_export.MAX_INT8_ACCURACY_DROP", 1.0)
    version = train_model(tiny_csv, make_config(strategy="head"), registry=registry).version
    record = export_version(version, quantize=True)
    assert record["int8"]["method"] == "dynamic (per-channel weights)"
    int8 = version.path / "onnx" / "model.int8.onnx"
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node if n.name.startswith("/encoder/")}
    assert "MatMulInteger" in ops
    model, processor = load_version_model(version)
    texts = ["refund my order", "where is my parcel", "reset my password please"]
    logits, embeddings = onnx_outputs(onnx_session(int8), processor, texts, ("logits", "embeddings"))
    weight, bias = (t.detach().numpy() for t in (model.head.weight, model.head.bias))
    # The head reads the int8 encoder's embeddings in float: its logits are the float layer's.
    np.testing.assert_allclose(logits, embeddings @ weight.T + bias, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # a `refit train` child
def test_a_retrain_child_is_quantised_when_production_was(
    version: Any, registry: ModelRegistry, tmp_path: Path
) -> None:
    from monitoring.candidate import train_candidate
    from monitoring.retrain import read_rows

    # A service on `onnx-int8` would otherwise quantise the candidate itself when it is promoted.
    export_version(version, quantize=True)
    rows = pd.concat([read_rows(version, s) for s in ("train", "validation")], ignore_index=True)
    test = read_rows(version, "test")
    child = train_candidate(
        version, rows, registry, strategy="head", timeout_s=300, workdir=tmp_path, test=test
    )
    record = read_export_record(registry.get(f"{version.name}:{child}"))
    assert record is not None and record["int8"]["method"] == "dynamic (per-channel weights)"


def test_find_export_names_what_serves_and_nothing_before_it_is_made(
    version: Any, caplog: pytest.LogCaptureFixture
) -> None:
    onnx = version.path / "onnx"
    assert find_export(version) is None and find_export(version, int8=True) is None
    export_version(version)
    assert find_export(version) == onnx / "model.onnx"
    assert find_export(version, int8=True) is None  # exported, not yet quantised
    record = export_version(version, quantize=True)
    kept = record["int8"]["kept"]
    assert find_export(version, int8=True) == onnx / ("model.int8.onnx" if kept else "model.onnx")
    # An int8 model that lost too much accuracy is not served: its record says so.
    record["int8"]["kept"] = False
    (onnx / "export.json").write_text(json.dumps(record))
    assert find_export(version, int8=True) == onnx / "model.onnx"
    assert "int8 was not kept" in caplog.text


def test_exported_graph_takes_any_batch_and_length(version: Any) -> None:
    export_version(version)
    model, processor = load_version_model(version)
    texts = [
        "refund",
        "where is my parcel today please",
        "reset my password now please today refund",
    ]
    session = onnx_session(version.path / "onnx" / "model.onnx", ["CPUExecutionProvider"])
    exported = onnx_logits(session, processor, texts, batch_size=2)
    reference = predict(model, processor, texts, mixed_precision="no").logits
    assert exported.shape == (3, 3)
    assert np.abs(exported - reference).max() <= 1e-4


def test_parity_failure_is_refused_and_the_file_removed(version: Any) -> None:
    # ONNX Runtime's kernels differ from torch's by a few 1e-6 on this model: a tolerance far
    # below that is a real parity failure.
    with pytest.raises(
        ExportError,
        match=r"does not match torch: max \|logit diff\| = [0-9.e-]+, [0-9.e-]+ of the logits. scale, "
        r"expected <= 1e-09",
    ):
        export_version(version, parity_tolerance=1e-9)
    assert not list((version.path / "onnx").glob("model.onnx*"))
    assert read_export_record(version) is None


def export_in_child(home: str, tag: str, start: Any, results: Any) -> None:
    """A service worker's first load: export the version unless another process has."""
    from training.onnx_export import ensure_export

    version = ModelRegistry(Path(home)).get(tag)
    start.wait()
    try:
        results.put(("ok", str(ensure_export(version))))
    except Exception as exc:
        results.put(("error", f"{type(exc).__name__}: {exc}"))


@pytest.mark.slow  # child processes
def test_workers_starting_together_export_once_and_both_load(version: Any, registry: ModelRegistry) -> None:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(2), context.Queue()
    children = [
        context.Process(target=export_in_child, args=(str(registry.home), version.tag, start, results))
        for _ in range(2)
    ]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=300) for _ in children]
    for child in children:
        child.join(60)
    assert outcomes == [("ok", str(version.path / "onnx" / "model.onnx"))] * 2
    assert read_export_record(version) is not None
    assert not list((version.path / "onnx").glob("*.partial"))
