"""The files of one saved version, and how to read them back with nothing but the version.

<version>/
  model/                      merged weights (model.safetensors), encoder architecture, tokenizer or
                              image preprocessing
  labels.json                 index -> label
  training_config.json        the TrainingConfig that produced it
  metrics.json                test and validation EvaluationResult, ladder comparison
  report.md, report.html      readable evaluation report
  reference_profile.parquet   drift reference: texts, predictions, embeddings
  data/{train,validation,test}.parquet   the exact splits (retraining and the promotion gate);
                              images by content key, their bytes in $BENTOML_HOME/refit/images
  refit.json                  manifest: strategy, base model, fingerprint, parent, created...
  onnx/                       written by `refit models export`
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from training.blobs import BlobStore, registry_images
from training.errors import ModelLoadError
from training.groups import GROUP
from training.processors import Processor, load_processor, load_tokenizer
from training.reference_profile import PROFILE_FILE, read_reference_profile
from training.registry import ModelVersion

if TYPE_CHECKING:
    from training.model import Classifier

MODEL_DIR = "model"
LABELS_FILE = "labels.json"
CONFIG_FILE = "training_config.json"
METRICS_FILE = "metrics.json"
DATA_DIR = "data"
ONNX_DIR = "onnx"
SPLITS = ("train", "validation", "test")


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as indented UTF-8 JSON."""
    path.write_text(json.dumps(value, indent=2, default=str) + "\n", encoding="utf-8")


def read_json(path: Path) -> Any:
    """Read a JSON file of a version, with a clear error when it is missing or corrupt."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"Version file {path} is missing or corrupt: {exc}") from exc


def write_splits(directory: Path, splits: dict[str, pd.DataFrame]) -> None:
    """Save the train/validation/test frames under ``data/``."""
    (directory / DATA_DIR).mkdir(parents=True, exist_ok=True)
    for name, frame in splits.items():
        # Texts keep their input, label and group (group_column); images keep their metadata too.
        text_columns = [c for c in ("text", "label", GROUP) if c in frame.columns]
        kept = frame[text_columns] if "text" in frame.columns else frame
        kept.to_parquet(directory / DATA_DIR / f"{name}.parquet", index=False)


def read_split(version: ModelVersion, split: str) -> pd.DataFrame:
    """One of the version's saved data splits (columns ``text`` or ``image``, ``label``, and
    ``group`` when the version was trained with a ``group_column``)."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}")
    try:
        return pd.read_parquet(version.path / DATA_DIR / f"{split}.parquet")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Split {split!r} of {version.tag} cannot be read: {exc}") from exc


def read_labels(version: ModelVersion) -> list[str]:
    """Label names by output index."""
    return list(read_json(version.path / LABELS_FILE))


def read_metrics(version: ModelVersion) -> dict[str, Any]:
    """The version's metrics.json (``test``, ``validation``, ``ladder``)."""
    return dict(read_json(version.path / METRICS_FILE))


def load_version_model(version: ModelVersion) -> tuple[Classifier, Processor]:
    """The version's classifier (eval mode, CPU) and processor."""
    # Here, not at the top: what reads a version without running torch (the service's ONNX
    # workers) then never imports it.
    from training.model import load_classifier

    return load_classifier(version.path / MODEL_DIR)


def version_modality(version: ModelVersion) -> str:
    """``text`` or ``image``, as the version recorded it."""
    return str(version.manifest.get("modality", "text"))


def version_images(version: ModelVersion) -> BlobStore:
    """The image store of the registry that holds ``version`` (``<home>/models/<name>/<version>``)."""
    return registry_images(version.path.parents[2])


def split_inputs(version: ModelVersion, frame: pd.DataFrame) -> list[Any]:
    """What the version's processor reads for each row of one of its frames: texts or image files."""
    if "image" in frame.columns:
        store = version_images(version)
        return [store.path(key) for key in frame["image"]]
    return list(frame["text"])


def load_version_processor(version: ModelVersion) -> Processor:
    """The version's processor alone (what runs its ONNX export beside the graph)."""
    return load_processor(version.path / MODEL_DIR)


def load_version_tokenizer(version: ModelVersion) -> Any:
    """The version's tokenizer alone (what a backend that runs the ONNX export needs)."""
    return load_tokenizer(str(version.path / MODEL_DIR))


def load_version_profile(version: ModelVersion) -> pd.DataFrame:
    """The version's reference profile for drift monitoring."""
    return read_reference_profile(version.path / PROFILE_FILE)
