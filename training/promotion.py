"""Promotion that cannot break serving: a version must load and answer before it becomes production.

Replicas follow the registry's production version on their own; a version whose weights or ONNX
export are corrupt would be promoted, refused by every worker that tries to swap to it, and leave
the stage file naming a version nothing serves. So `refit models promote`, `refit models rollback`
and the monitor's gate first load the version the way a service does and classify a few of its
test texts, with torch and, when it has one, with its ONNX export (whose logits must match).
"""

from __future__ import annotations

from typing import Any

from training.artifacts import ONNX_DIR, load_version_model, read_split, split_inputs
from training.errors import ModelLoadError
from training.inference import predict
from training.registry import ModelRegistry, ModelVersion

SMOKE_TEXTS = 4  # test texts classified before a promotion


def check_servable(version: ModelVersion) -> None:
    """Load ``version`` and classify a few texts with torch and its ONNX export (if any).

    Raises:
        ModelLoadError: something does not load, or the export's answers differ from torch's.
    """
    from training.onnx_export import PARITY_TOLERANCE, onnx_logits, onnx_session, parity_gap
    from training.onnx_files import ONNX_FILE

    try:
        model, processor = load_version_model(version)
        inputs = split_inputs(version, read_split(version, "test").head(SMOKE_TEXTS))
        reference = predict(model, processor, inputs, mixed_precision="no").logits
        export = version.path / ONNX_DIR / ONNX_FILE
        if not export.exists():
            return
        exported = onnx_logits(onnx_session(export, ["CPUExecutionProvider"]), processor, inputs)
    except Exception as exc:  # any failure to load or run is a reason not to serve it
        raise ModelLoadError(
            f"{version.tag} cannot be promoted: it does not load and answer as a service would "
            f"({type(exc).__name__}: {str(exc)[:300]}). Re-train or re-export it."
        ) from exc
    gap = parity_gap(reference, exported)
    if gap > PARITY_TOLERANCE:
        raise ModelLoadError(
            f"{version.tag} cannot be promoted: its ONNX export answers differently from its weights "
            f"(max |logit diff| {gap:.2e} of the logits' scale, expected <= {PARITY_TOLERANCE:.0e}). "
            f"Re-export it: `refit models export {version.tag}`."
        )


def export_as_production(registry: ModelRegistry, version: ModelVersion) -> dict[str, Any] | None:
    """Export ``version`` (and quantise it) when the production version it would replace (by a
    promotion or a rollback) was, and it was not; the export record, or None when nothing was made.

    A service on ONNX would otherwise make the export in the worker that swaps to it, importing
    torch there for that worker's life (see `refit serve`), while it serves.
    """
    from training.onnx_export import export_version
    from training.onnx_files import read_export_record

    if version.stage == "production":
        return None
    theirs = read_export_record(registry.get(f"{version.name}:production"))
    if theirs is None:
        return None
    ours = read_export_record(version)
    int8 = "int8" in theirs
    if ours is not None and (not int8 or "int8" in ours):
        return None
    return export_version(version, quantize=int8)


def promote_checked(registry: ModelRegistry, ref: str, reason: str = "") -> ModelVersion:
    """Promote ``ref`` once :func:`check_servable` passes; the stages stay as they were otherwise.

    Raises:
        ModelLoadError: the version cannot be served.
    """
    version = registry.get(ref)
    if version.stage != "production":
        check_servable(version)
    return registry.promote(version.tag, reason=reason)


def rollback_checked(registry: ModelRegistry, name: str, reason: str = "") -> ModelVersion:
    """Roll ``name`` back once the version it returns to passes :func:`check_servable`.

    Raises:
        RegistryError: there is no earlier production version.
        ModelLoadError: that version cannot be served.
    """
    check_servable(registry.rollback_target(name))
    return registry.rollback(name, reason=reason)
