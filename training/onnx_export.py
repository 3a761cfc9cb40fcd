"""ONNX export of a registered version, checked against torch, optionally int8-quantised.

The exported graph takes the processor's tensors (texts: ``input_ids`` and ``attention_mask``,
batch and sequence axes dynamic; images: ``pixel_values``, batch axis dynamic) and returns
``logits`` and ``embeddings`` (what the head reads; the monitor uses them). Preprocessing stays
beside the graph, in the processor saved with the version, which training, the parity check and
the service all run: so an input is preprocessed identically on every path.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.artifacts import ONNX_DIR, load_version_model, read_labels, read_split, split_inputs, write_json
from training.errors import ExportError
from training.inference import iter_batches, predict
from training.model import Classifier
from training.onnx_files import (
    EXPORT_RECORD,
    ONNX_FILE,
    QUANTIZED_FILE,
    export_lock,
    find_export,
    read_export_record,
)
from training.processors import Processor
from training.registry import ModelVersion

logger = logging.getLogger(__name__)

CALIBRATION_ROWS = 128  # training images that calibrate a static int8 model's activation ranges
MAX_INT8_ACCURACY_DROP = 0.01  # an int8 model that loses more accuracy than this is not kept
PARITY_TOLERANCE = 1e-4  # of the largest |logit| (at least 1): float32 rounding grows with the scale


def parity_gap(reference: np.ndarray, exported: np.ndarray) -> float:
    """max |torch - ONNX logit| over the larger of 1 and the largest |torch logit|.

    A head calibrated on a few confident rows can have logits in the hundreds, where float32
    kernels that add in another order differ by 1e-3 although the answers agree to 1e-6.
    """
    if not len(reference):
        return 0.0
    return float(np.abs(reference - exported).max() / max(1.0, float(np.abs(reference).max())))


OPSET = 17


class _ExportWrapper(nn.Module):
    """Returns (logits, embeddings) as a tuple, which the exporter names as outputs."""

    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = self.model.embed(*inputs)
        return self.model.classify(embeddings), embeddings


def top1_accuracy(y: np.ndarray, logits: np.ndarray) -> float:
    """Share of rows whose largest logit is their label index (0.0 for no rows)."""
    return float((logits.argmax(axis=1) == y).mean()) if len(y) else 0.0


def export_to_onnx(model: Classifier, processor: Processor, path: Path) -> None:
    """Write ``model`` as ONNX (TorchScript exporter: one self-contained file, dynamic axes)."""
    model = model.eval().cpu()
    args = processor.example()
    axes = {**processor.dynamic_axes, "logits": {0: "batch"}, "embeddings": {0: "batch"}}
    path.parent.mkdir(parents=True, exist_ok=True)
    # The tracer warns about Python branches in transformers' mask helpers; the sample batch
    # has padding, so the traced graph keeps the masked path that every batch needs.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        torch.onnx.export(
            _ExportWrapper(model),
            args,
            str(path),
            input_names=list(processor.input_names),
            output_names=["logits", "embeddings"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )


def onnx_session(path: Path, providers: list[str] | None = None) -> Any:
    """An ONNX Runtime session, CUDA first where that provider is available."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = providers or ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ort.InferenceSession(str(path), providers=[p for p in wanted if p in available])


def onnx_logits(session: Any, processor: Processor, inputs: list[Any], batch_size: int = 64) -> np.ndarray:
    """Logits (n, labels) of an ONNX session on ``inputs``, in input order."""
    return onnx_outputs(session, processor, inputs, ("logits",), batch_size)[0]


def onnx_outputs(
    session: Any,
    processor: Processor,
    inputs: list[Any],
    names: tuple[str, ...],
    batch_size: int = 64,
) -> list[np.ndarray]:
    """The named outputs (``logits``, ``embeddings``) of an ONNX session on ``inputs``, in input
    order, from one run per batch."""
    out: list[np.ndarray] = []
    for idx, batch in iter_batches(processor, inputs, batch_size):
        feeds = {name: tensor.numpy() for name, tensor in zip(processor.input_names, batch, strict=True)}
        values = session.run(list(names), feeds)
        if not out:
            out = [np.zeros((len(inputs), v.shape[1]), dtype=np.float32) for v in values]
        for array, value in zip(out, values, strict=True):
            array[idx] = value
    return out or [np.zeros((0, 0), dtype=np.float32) for _ in names]


def ensure_export(version: ModelVersion) -> Path:
    """The version's ONNX file, exported now (with its parity check) unless it exists.

    Safe from several processes at once: the first exports while the others wait on the lock,
    then find the file and load it.
    """
    found = find_export(version)
    if found is not None:
        return found
    target = version.path / ONNX_DIR / ONNX_FILE
    with export_lock(version):
        if not target.is_file():
            logger.info("%s has no ONNX export yet; exporting it now", version.tag)
            write_export(version, quantize=False, max_eval_rows=2000)
    return target


def ensure_int8_export(version: ModelVersion) -> Path:
    """The int8 model that serves the version (see :func:`training.onnx_files.find_export`),
    quantised now (see :func:`quantize_version`) unless it was."""
    found = find_export(version, int8=True)
    if found is not None:
        return found
    with export_lock(version):
        record = read_export_record(version)
        if record is None or "int8" not in record:
            logger.info("%s has no int8 export yet; quantising it now", version.tag)
            write_export(version, quantize=True, max_eval_rows=2000)
    found = find_export(version, int8=True)
    assert found is not None, "write_export(quantize=True) records the int8 model"
    return found


def export_version(
    version: ModelVersion,
    *,
    quantize: bool = False,
    max_eval_rows: int = 2000,
    parity_tolerance: float = PARITY_TOLERANCE,
) -> dict[str, Any]:
    """Export a registered version to ``<version>/onnx`` and record parity (and int8 accuracy).

    Args:
        version: the version to export.
        quantize: also write an int8 model (see :func:`quantize_version`) and record its accuracy.
        max_eval_rows: test rows the parity and accuracy are measured on.
        parity_tolerance: the largest |logit difference| from torch that is accepted.

    Raises:
        ExportError: ONNX logits differ from torch by more than ``parity_tolerance``.
    """
    with export_lock(version):
        return write_export(version, quantize, max_eval_rows, parity_tolerance)


def write_export(
    version: ModelVersion, quantize: bool, max_eval_rows: int, parity_tolerance: float = PARITY_TOLERANCE
) -> dict[str, Any]:
    """:func:`export_version`'s work, for a caller that holds the version's export lock."""
    model, processor = load_version_model(version)
    labels = read_labels(version)
    test = read_split(version, "test").head(max_eval_rows)
    inputs, y = split_inputs(version, test), np.array([labels.index(lab) for lab in test["label"]])
    target = version.path / ONNX_DIR / ONNX_FILE
    # Written under another name and renamed once parity holds: a service that loads the version
    # meanwhile never reads a half-written or unchecked file.
    # A name of its own per process, so that nothing another process does can remove it.
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    start = time.perf_counter()
    export_to_onnx(model, processor, partial)
    reference = predict(model, processor, inputs, mixed_precision="no").logits
    exported = onnx_logits(onnx_session(partial, ["CPUExecutionProvider"]), processor, inputs)
    diff = float(np.abs(reference - exported).max()) if len(inputs) else 0.0
    gap = parity_gap(reference, exported)
    record: dict[str, Any] = {
        "file": f"{ONNX_DIR}/{ONNX_FILE}",
        "opset": OPSET,
        "parity_max_abs_diff": diff,
        "parity_relative_diff": gap,
        "parity_tolerance": parity_tolerance,
        "parity_rows": len(inputs),
        "export_seconds": round(time.perf_counter() - start, 2),
        "accuracy": top1_accuracy(y, exported),
    }
    if gap > parity_tolerance:
        partial.unlink(missing_ok=True)
        raise ExportError(
            f"ONNX export of {version.tag} does not match torch: max |logit diff| = {diff:.2e}, "
            f"{gap:.2e} of the logits' scale, expected <= {parity_tolerance:.0e}. The ONNX file was not kept."
        )
    partial.replace(target)
    if quantize:
        record["int8"] = quantize_version(version, processor, inputs, y, record["accuracy"])
    write_json(version.path / ONNX_DIR / EXPORT_RECORD, record)
    return record


def quantize_version(
    version: ModelVersion,
    processor: Processor,
    inputs: list[Any],
    y: np.ndarray,
    fp32_accuracy: float,
) -> dict[str, Any]:
    """int8 quantisation of the exported model; record its accuracy change on test data.

    A text model's encoder is quantised dynamically (its cost is in MatMuls, whose activations
    are quantised per batch), with per-channel weights. An image model is quantised statically: a
    CNN's cost is in its convolutions, which dynamic quantisation leaves in float, so activation
    ranges are calibrated on up to ``CALIBRATION_ROWS`` training images (never test images). The
    head stays in float either way (see :func:`head_nodes`). An int8 model that loses more than
    ``MAX_INT8_ACCURACY_DROP`` accuracy is not kept; the record says so.
    """
    source, target = version.path / ONNX_DIR / ONNX_FILE, version.path / ONNX_DIR / QUANTIZED_FILE
    static = "pixel_values" in processor.input_names
    # onnxruntime logs a pre-processing hint on the root logger at every call; the graph is
    # pre-processed where that applies (static), so the hint is silenced for the call.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        if static:
            calibration = split_inputs(version, read_split(version, "train").head(CALIBRATION_ROWS))
            quantize_statically(source, target, processor, calibration)
        else:
            import onnx
            from onnxruntime.quantization import QuantType, quantize_dynamic

            # Named positively: the quantiser rewrites the head's Gemm into a MatMul of another
            # name before it reads an exclusion list, so excluding the head by name quantises it.
            nodes = onnx.load(str(source)).graph.node
            head = set(head_nodes(nodes))
            encoder = [n.name for n in nodes if n.name not in head]
            quantize_dynamic(
                str(source),
                str(target),
                weight_type=QuantType.QInt8,
                per_channel=True,
                nodes_to_quantize=encoder,
            )
    finally:
        root.setLevel(level)
    logits = onnx_logits(onnx_session(target, ["CPUExecutionProvider"]), processor, inputs)
    accuracy = top1_accuracy(y, logits)
    record: dict[str, Any] = {
        "file": f"{ONNX_DIR}/{QUANTIZED_FILE}",
        "method": "static (QDQ, per-channel weights)" if static else "dynamic (per-channel weights)",
        "accuracy": accuracy,
        "accuracy_change": accuracy - fp32_accuracy,
        "size_mb": round(target.stat().st_size / 2**20, 2),
        "fp32_size_mb": round(source.stat().st_size / 2**20, 2),
    }
    if static:
        record["calibration_rows"] = len(calibration)
    record["kept"] = fp32_accuracy - accuracy <= MAX_INT8_ACCURACY_DROP
    if not record["kept"]:
        target.unlink()
        record["file"] = None
        logger.warning(
            "%s: int8 accuracy %.4f is %.4f below float's; the int8 model was not kept",
            version.tag, accuracy, fp32_accuracy - accuracy,
        )  # fmt: skip
    return record


def quantize_statically(source: Path, target: Path, processor: Processor, calibration: list[Any]) -> None:
    """Static int8 quantisation of ``source`` to ``target``, activation ranges from ``calibration``."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = iter_batches(processor, calibration, 16)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            if batch is None:
                return None
            return {name: t.numpy() for name, t in zip(processor.input_names, batch[1], strict=True)}

    prepared = target.with_name(f"{target.name}.{os.getpid()}.prep.onnx")
    try:
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        # The encoder's first convolution stays in float too: it reads raw pixels, and in float it
        # halved the loss of a tile model (1.07 -> 0.53 points, 187 test images) for 11% of
        # int8's speed.
        nodes = onnx.load(str(prepared)).graph.node
        first_conv = next((n.name for n in nodes if n.op_type == "Conv"), None)
        excluded = head_nodes(nodes) + ([first_conv] if first_conv else [])
        quantize_static(
            str(prepared),
            str(target),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
        )
    finally:
        prepared.unlink(missing_ok=True)


def head_nodes(nodes: Any) -> list[str]:
    """Names of the graph's nodes outside the encoder: the head, and the pooling before it.

    They stay in float in an int8 model. The head reads L2-normalised embeddings and its weights
    are large (a probe folds the embeddings' standardisation into them, up to |w| 1,660 on
    BANKING77): int8 there left a text model at chance (0.02 against 0.93 test accuracy) and cost
    an image model 9 points on the magnetic tiles.
    """
    return [n.name for n in nodes if not n.name.startswith("/encoder/")]
