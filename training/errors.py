"""Exceptions raised by Refit.

    RefitError                 base of everything Refit raises on purpose
    ├── ConfigError            a config file, key or value is wrong
    ├── DataError              a dataset cannot be used as given
    ├── ModelLoadError         a base model or saved version cannot be loaded
    │   └── VersionLoadingError  not loaded yet: it is loading in the background
    ├── RegistryError          a registry operation was refused
    │   ├── VersionNotFoundError
    │   └── PinNotAllowedError   a request pinned a version it may not use
    └── ExportError            ONNX export failed its parity check

Every message says what was expected, what was found and, where there is one, how to fix it.
"""


class RefitError(Exception):
    """Base class of every error Refit raises on purpose."""


class ConfigError(RefitError):
    """A config file, key or value is wrong."""


class DataError(RefitError):
    """A dataset cannot be used as given."""


class ModelLoadError(RefitError):
    """A base model or a saved version cannot be loaded."""


class VersionLoadingError(ModelLoadError):
    """A version is still loading (exporting to ONNX, say); ask again shortly."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RegistryError(RefitError):
    """A registry operation was refused."""


class VersionNotFoundError(RegistryError):
    """No registered version matches the tag or stage asked for."""


class PinNotAllowedError(RegistryError):
    """A request pinned a version that is neither production, a candidate nor allowed by an admin."""


class ExportError(RefitError):
    """ONNX export failed or did not match torch."""
