"""The training stage's one typed config, loaded from a file, the environment and overrides.

Precedence, highest first: explicit overrides (CLI flags), environment variables
(``REFIT_TRAIN_<KEY>``), the config file (YAML or TOML), the defaults below.
"""

from __future__ import annotations

import os
import tomllib
import typing
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import Field, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from training.errors import ConfigError

Strategy = Literal["baseline", "head", "partial", "lora", "full", "auto"]
STRATEGIES: tuple[str, ...] = ("baseline", "head", "partial", "lora", "full", "auto")
FINETUNE_STRATEGIES: tuple[str, ...] = ("partial", "lora", "full")
CV_STRATEGIES: tuple[str, ...] = ("baseline", "head")  # the ones `selection: cv` can choose among

# Learning rates that worked for MiniLM-sized encoders; `learning_rate` overrides them.
DEFAULT_LEARNING_RATES: dict[str, float] = {"partial": 2e-4, "lora": 1e-3, "full": 8e-5}

_file_values: ContextVar[dict[str, Any] | None] = ContextVar("refit_train_file_values", default=None)


class _FileValuesSource(PydanticBaseSettingsSource):
    """Feeds the values read from the config file, below the environment in precedence."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return (_file_values.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_file_values.get() or {})


class _PlainEnvSource(EnvSettingsSource):
    """Environment variables where a list or mapping may also be written plainly: ``a,b,c``.

    JSON still works (``["a", "b"]``); a value that is not JSON is passed on as text, and
    `FileSettings` splits it.
    """

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            return value


def split_plain_value(value: str, annotation: Any) -> Any:
    """``a, b`` as ``["a", "b"]`` for a list field; ``k=v, k2=v2`` as a dict for a mapping field.

    Raises:
        ValueError: a mapping entry without ``=``.
    """
    items = [item.strip() for item in value.split(",") if item.strip()]
    if _container_of(annotation) is dict:
        pairs = [item.partition("=") for item in items]
        bad = [key for key, sep, _ in pairs if not sep]
        if bad:
            raise ValueError(f"expected KEY=VALUE pairs separated by commas; found {value!r}")
        return {key.strip(): raw.strip() for key, _, raw in pairs}
    return items


def _container_of(annotation: Any) -> type | None:
    """``list`` or ``dict`` when a field holds one (``X | None`` included), else None."""
    for candidate in (annotation, *typing.get_args(annotation)):
        origin = typing.get_origin(candidate) or candidate
        if origin in (list, dict):
            return origin  # type: ignore[no-any-return]
    return None


class FileSettings(BaseSettings):
    """Settings read from init values, then the environment, then a config file (see `load_settings`).

    A list or mapping setting also takes the plain comma-separated form everywhere (a flag,
    ``--set``, the environment, the file): ``labels: a, b`` or ``REFIT_..._LABELS=a,b``.
    """

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _PlainEnvSource(settings_cls), _FileValuesSource(settings_cls)

    @model_validator(mode="before")
    @classmethod
    def _split_plain_values(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        fields = cls.model_fields
        return {
            key: (
                split_plain_value(value, fields[key].annotation)
                if isinstance(value, str) and key in fields and _container_of(fields[key].annotation)
                else value
            )
            for key, value in values.items()
        }


class TrainingConfig(FileSettings):
    """Everything one training run needs; saved with the version it produces."""

    model_config = SettingsConfigDict(env_prefix="REFIT_TRAIN_", extra="forbid")

    name: str = Field("refit-classifier", pattern=r"^[a-z0-9][a-z0-9_.-]*$")  # registry model name
    base_model: str = "minilm"  # "minilm" (bundled), a local HF directory or a hub id
    strategy: Strategy = "auto"  # baseline, head, partial, lora, full, or auto (the ladder)
    text_column: str = "text"  # column of the input texts in the data file(s)
    label_column: str = "label"  # column of the labels
    test_file: Path | None = None  # held-out test data; else a stratified split of DATA
    validation_fraction: float = Field(0.1, ge=0.0, lt=0.5)  # per label, for selection and early stopping
    # holdout: choose on the validation split; cv: k-fold cross-validation on the training rows
    # (no validation split is carved: for a few rows per label; baseline and head only)
    selection: Literal["holdout", "cv"] = "holdout"
    cv_folds: int = Field(5, ge=2)  # folds of `selection: cv` (fewer when a label has fewer rows)
    test_fraction: float = Field(0.2, ge=0.0, lt=0.5)  # per label, when there is no test_file
    seed: int = 42  # of the splits, initialisation and data order
    max_length: int = Field(128, ge=8, le=4096)  # tokens; longer texts are truncated
    normalize_embeddings: bool = True  # L2-normalise mean-pooled embeddings before the head
    batch_size: int = Field(32, ge=1)  # training examples per step
    eval_batch_size: int = Field(128, ge=1)  # texts per forward pass when embedding or evaluating
    gradient_accumulation_steps: int = Field(1, ge=1)  # batches per optimiser step
    epochs: int = Field(10, ge=1)  # upper bound; early stopping usually ends sooner
    learning_rate: float | None = Field(None, gt=0)  # None: the strategy's default
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)  # share of the steps with a rising learning rate
    weight_decay: float = Field(0.01, ge=0.0)  # AdamW
    early_stopping_patience: int = Field(3, ge=1)  # epochs without validation macro-F1 gain
    partial_layers: int = Field(2, ge=1)  # top encoder layers unfrozen by `partial`
    lora_r: int = Field(16, ge=1)  # rank of the LoRA update
    lora_alpha: int = Field(32, ge=1)  # LoRA scaling (alpha / r)
    lora_dropout: float = Field(0.1, ge=0.0, lt=1.0)  # dropout on the LoRA input
    class_weighting: Literal["balanced", "none"] = "balanced"  # loss weights inverse to label counts
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)  # 0.1 lost 1-4 points at 10/intent (dev split)
    refit_head: bool = True  # refit linear probes on train + validation once C is chosen
    reprobe_after_finetune: bool = True  # replace a fine-tuned head by a probe on its features
    calibrate: bool = True  # temperature-scale logits on validation data (folded into the head)
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"  # auto: bf16/fp16 on CUDA
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when present
    # the rungs of `auto`, in order
    auto_ladder: list[str] = Field(default_factory=lambda: ["baseline", "head", "lora", "full"])
    auto_target_macro_f1: float = Field(0.97, gt=0.0, le=1.0)  # stop climbing once reached
    auto_min_gain: float = Field(0.005, ge=0.0)  # stop when a rung gains less than this
    profile_rows: int = Field(5000, ge=10)  # rows of training data kept as the drift reference
    # open-set answers: the abstention threshold may cost this much validation accuracy
    abstain_max_accuracy_loss: float = Field(0.02, ge=0.0, lt=1.0)
    oos_label: str | None = None  # a label of the data that means "out of scope": predicting it abstains
    parent_version: str | None = None  # lineage; defaults to the current production version

    @model_validator(mode="after")
    def _check_selection(self) -> TrainingConfig:
        rungs = self.auto_ladder if self.strategy == "auto" else [self.strategy]
        tuned = [s for s in rungs if s not in CV_STRATEGIES]
        if self.selection == "cv" and tuned:
            raise ValueError(
                f"selection 'cv' covers the strategies {list(CV_STRATEGIES)}; found {tuned} (fine-tuning "
                "stops early on a validation split). Use selection 'holdout', or a ladder of "
                "baseline and head: --set auto_ladder=baseline,head"
            )
        return self

    @model_validator(mode="after")
    def _check_ladder(self) -> TrainingConfig:
        bad = [s for s in self.auto_ladder if s not in STRATEGIES or s == "auto"]
        if bad or not self.auto_ladder:
            raise ValueError(
                f"auto_ladder must be a non-empty list of {list(STRATEGIES[:-1])}; found {bad or '[]'}"
            )
        return self

    def learning_rate_for(self, strategy: str) -> float:
        """The learning rate a fine-tuning strategy uses: the configured one or its default."""
        return self.learning_rate or DEFAULT_LEARNING_RATES[strategy]


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML or TOML config file into a dict.

    Raises:
        ConfigError: the file is missing, has another extension, or does not parse to a mapping.
    """
    if not path.is_file():
        raise ConfigError(f"Config file not found: {path}. Expected a .yaml, .yml or .toml file.")
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        elif suffix == ".toml":
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        else:
            raise ConfigError(f"Config file {path} has extension '{suffix}'; expected .yaml, .yml or .toml.")
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"Config file {path} does not parse: {exc}") from exc
    if not isinstance(values, dict):
        raise ConfigError(
            f"Config file {path} must hold a mapping of keys to values; found {type(values).__name__}."
        )
    return values


def reject_unknown_keys(values: dict[str, Any], source: str, valid: set[str]) -> None:
    """Raise a ConfigError naming every key of ``values`` that is not in ``valid``."""
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ConfigError(
            f"Unknown config key(s) {unknown} in {source}. Valid keys: {', '.join(sorted(valid))}."
        )


S = TypeVar("S", bound=FileSettings)


def load_settings(
    cls: type[S],
    path: Path | None = None,
    overrides: dict[str, Any] | None = None,
    config_env: str | None = None,
) -> S:
    """Build a stage's settings from a file, the environment and explicit overrides.

    Args:
        cls: the settings class (its ``env_prefix`` names the environment variables).
        path: optional YAML or TOML file.
        overrides: values that win over everything else (CLI flags); ``None`` values are ignored.
        config_env: a variable naming the file when ``path`` is None (e.g. ``REFIT_SERVE_CONFIG``).

    Raises:
        ConfigError: an unknown key, an unreadable file or an invalid value.
    """
    if path is None and config_env and os.environ.get(config_env):
        path = Path(os.environ[config_env])
    valid = set(cls.model_fields)
    file_values = read_config_file(path) if path else {}
    reject_unknown_keys(file_values, str(path), valid)
    explicit = {k: v for k, v in (overrides or {}).items() if v is not None}
    reject_unknown_keys(explicit, "the overrides", valid)
    token = _file_values.set(file_values)
    try:
        return cls(**explicit)
    except ValidationError as exc:
        raise ConfigError(describe_invalid_settings(cls, exc)) from None
    except SettingsError as exc:  # a value the environment source could not read at all
        raise ConfigError(f"Invalid {cls.__name__}: {exc}") from None
    finally:
        _file_values.reset(token)


def describe_invalid_settings(cls: type[BaseSettings], exc: ValidationError) -> str:
    """One line naming each bad value: the setting, its environment variable, what was expected and found."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    problems = []
    for err in exc.errors():
        if not err["loc"]:  # a check across fields: its message names them
            problems.append(str(err["msg"]).removeprefix("Value error, "))
            continue
        key = ".".join(str(p) for p in err["loc"])
        field = str(err["loc"][0])
        variable = f" [{prefix}{field.upper()}]" if field in cls.model_fields and prefix else ""
        problems.append(f"{key}{variable}: {err['msg']}{_form_hint(cls, field)} (found {err.get('input')!r})")
    return f"Invalid {cls.__name__}: " + "; ".join(problems)


def _form_hint(cls: type[BaseSettings], field: str) -> str:
    container = _container_of(cls.model_fields[field].annotation) if field in cls.model_fields else None
    if container is list:
        return " (expected a list: a,b,c or a JSON list)"
    if container is dict:
        return " (expected a mapping: key=value,key2=value2 or a JSON object)"
    return ""


def load_training_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> TrainingConfig:
    """Build the training config from a file, ``REFIT_TRAIN_*`` variables and explicit overrides.

    Raises:
        ConfigError: an unknown key, an unreadable file or an invalid value.
    """
    return load_settings(TrainingConfig, path, overrides)
