"""Settings machinery shared by the three stages (training, service, monitoring), on pydantic-settings.

Each stage has one typed settings class built on :class:`StageSettings` and loaded with
:func:`load_settings`. Precedence, highest first: explicit overrides (CLI flags), environment
variables (``<PREFIX><KEY>``), the config file (pydantic-settings' own YAML or TOML source), the
defaults. Unknown keys are rejected (``extra="forbid"``) with the valid ones listed. A list or
mapping setting also takes the plain comma-separated form everywhere: ``labels: a, b`` or
``REFIT_..._LABELS=a,b``. :class:`ServedModelSettings` says which model is served and watched, and
where its registry and inference log are: the service and the monitor share it.
"""

from __future__ import annotations

import difflib
import os
import tomllib
import typing
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Self, TypeVar

import yaml
from pydantic import ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from training.errors import ConfigError
from training.registry import ModelRegistry, default_home

CONFIG_SUFFIXES = (".yaml", ".yml", ".toml")

# The file of the settings being built: pydantic-settings fixes file sources per class, while
# Refit names the file per call (--config, REFIT_*_CONFIG).
_config_file: ContextVar[Path | None] = ContextVar("refit_config_file", default=None)


class _PlainEnvSource(EnvSettingsSource):
    """Environment variables where a list or mapping may also be written plainly: ``a,b,c``.

    JSON still works (``["a", "b"]``); a value that is not JSON is passed on as text, and
    :class:`StageSettings` splits it.
    """

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            return value


class _YamlFileSource(YamlConfigSettingsSource):
    """pydantic-settings' YAML source, refusing a file that holds a list or a scalar by name."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        values = super()._read_file(file_path)
        if not isinstance(values, dict):
            raise ConfigError(
                f"Config file {file_path} must hold a mapping of keys to values; "
                f"found {type(values).__name__}."
            )
        return values


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


class StageSettings(BaseSettings):
    """The base of each stage's settings: init values, then the environment, then the config file."""

    model_config = SettingsConfigDict(extra="forbid")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = _config_file.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, _PlainEnvSource(settings_cls)]
        if path is not None and path.suffix.lower() == ".toml":
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        elif path is not None:
            sources.append(_YamlFileSource(settings_cls, yaml_file=path))
        return tuple(sources)

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


class ServedModelSettings(StageSettings):
    """Which model, and where its registry and inference log are: shared by the service and the monitor."""

    model: str = "refit-classifier"  # registry model name; when not set, the registry's only model
    registry_home: Path | None = None  # BentoML home holding the registry; None: $BENTOML_HOME
    log_url: str | None = None  # SQLAlchemy URL of the inference log; None: SQLite in registry home
    # Where the images of logged predictions are kept (content-addressed, beside the log): feedback
    # on an image needs the image to retrain. None: an `images` folder beside a SQLite log, or
    # <registry home>/refit/logged-images for a database server.
    image_store: Path | None = None

    @property
    def home(self) -> Path:
        """The registry's BentoML home."""
        return self.registry_home or default_home()

    @property
    def resolved_log_url(self) -> str:
        """The inference log's SQLAlchemy URL (a SQLite file in the registry home by default)."""
        return self.log_url or f"sqlite:///{self.home / 'refit' / 'inference.db'}"

    @property
    def image_store_path(self) -> Path:
        """The folder of logged images."""
        if self.image_store is not None:
            return self.image_store
        from sqlalchemy.engine import make_url

        url = make_url(self.resolved_log_url)
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            return Path(str(url.database)).parent / "images"
        return self.home / "refit" / "logged-images"

    def with_default_model(self) -> Self:
        """These settings, naming the registry's only model when no model was given.

        Raises:
            ConfigError: no model was given and the registry holds several.
        """
        if "model" in self.model_fields_set:
            return self
        names = ModelRegistry(self.home).names()
        if len(names) > 1:
            variable = f"{self.model_config.get('env_prefix', '')}MODEL"
            raise ConfigError(
                f"No model named and the registry {self.home} holds {len(names)}: {', '.join(names)}. "
                f"Pass --model NAME or set {variable}."
            )
        return self.model_copy(update={"model": names[0]}) if names else self


S = TypeVar("S", bound=StageSettings)


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
    if path is not None:
        check_config_file(path)
    explicit = {k: v for k, v in (overrides or {}).items() if v is not None}
    token = _config_file.set(path)
    try:
        return cls(**explicit)
    except ValidationError as exc:
        raise ConfigError(describe_invalid_settings(cls, exc, path, set(explicit))) from None
    except SettingsError as exc:  # a value the environment source could not read at all
        raise ConfigError(f"Invalid {cls.__name__}: {exc}") from None
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"Config file {path} does not parse: {exc}") from None
    finally:
        _config_file.reset(token)


def check_config_file(path: Path) -> None:
    """Raise a ConfigError unless ``path`` is an existing ``.yaml``, ``.yml`` or ``.toml`` file."""
    if not path.is_file():
        raise ConfigError(f"Config file not found: {path}. Expected a .yaml, .yml or .toml file.")
    if path.suffix.lower() not in CONFIG_SUFFIXES:
        raise ConfigError(f"Config file {path} has extension '{path.suffix}'; expected .yaml, .yml or .toml.")


def describe_invalid_settings(
    cls: type[BaseSettings], exc: ValidationError, path: Path | None = None, explicit: set[str] | None = None
) -> str:
    """One line naming each bad value: the setting, its environment variable, what was expected and found.

    Unknown keys come first, with where they were found and the valid keys.
    """
    unknown = sorted(str(e["loc"][0]) for e in exc.errors() if e["type"] == "extra_forbidden")
    if unknown:
        source = "the overrides" if set(unknown) <= (explicit or set()) else str(path)
        valid = ", ".join(sorted(cls.model_fields))
        close = {key: difflib.get_close_matches(key, cls.model_fields, n=1) for key in unknown}
        hints = [f"{key!r}: did you mean {match[0]!r}?" for key, match in close.items() if match]
        hint = f" {' '.join(hints)}" if hints else ""
        return f"Unknown config key(s) {unknown} in {source}.{hint} Valid keys: {valid}."
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
