"""Peer systems for side-by-side benchmarks, each in its own virtualenv.

``benchmarks/peers/<name>/requirements.txt`` pins a peer and everything it installs; the first
use creates ``benchmarks/peers/<name>/.venv`` from it (a ``torch`` pin is installed first, on its
own, so that pip takes the same local CPU wheel as Refit's), so that no peer's dependencies enter
Refit's. A ``python.txt`` beside the requirements names another Python version for the peer's
virtualenv (Triton's Python backend stub needs an interpreter built with a shared libpython).
The peer's scripts, beside its requirements, run under that interpreter and exchange files
(Parquet, JSON) with the benchmark, or serve over HTTP: they import nothing of Refit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

PEERS = Path(__file__).resolve().parent
INSTALL_TIMEOUT_S = 1800.0
# Every peer runs with its usage reporting off: a benchmark must not send a user's run to a vendor
# (NannyML reports each fit and estimate, Ray its cluster, the Hugging Face hub its downloads).
NO_TELEMETRY = {
    "NML_DISABLE_USAGE_LOGGING": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}


class PeerUnavailable(RuntimeError):
    """A peer could not be installed or run on this machine; the message carries its error."""


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def peer_python(name: str, root: Path = PEERS) -> Path:
    """The interpreter of the peer's virtualenv, created from its pinned requirements if needed.

    Args:
        name: the peer's folder under ``root``.
        root: where the peers' folders are.

    Raises:
        PeerUnavailable: the peer is unknown, or its virtualenv could not be created (pip's error).
    """
    folder = root / name
    requirements = folder / "requirements.txt"
    if not requirements.is_file():
        raise PeerUnavailable(f"{name}: no {requirements}")
    venv = folder / ".venv"
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    wanted = requirements.read_text()
    if python.is_file() and stamp.is_file() and stamp.read_text() == wanted:
        return python
    pins = [line.strip() for line in wanted.splitlines() if line.strip() and not line.startswith("#")]
    torch = [p for p in pins if p.split("==")[0].strip().lower() == "torch"]
    steps = [[peer_interpreter(folder), "-m", "venv", "--clear", str(venv)]]
    steps += [[str(python), "-m", "pip", "install", "--quiet", *torch]] if torch else []
    steps += [[str(python), "-m", "pip", "install", "--quiet", "-r", str(requirements)]]
    for step in steps:
        try:
            subprocess.run(step, check=True, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        except subprocess.CalledProcessError as exc:
            raise PeerUnavailable(f"{name}: {' '.join(step[-3:])} failed:\n{_tail(exc.stderr)}") from exc
        except subprocess.TimeoutExpired as exc:
            raise PeerUnavailable(f"{name}: {' '.join(step[-3:])} ran past {exc.timeout:.0f} s") from exc
    stamp.write_text(wanted)
    return python


def peer_interpreter(folder: Path) -> str:
    """The Python that builds the peer's virtualenv: this one, or the version ``python.txt`` names.

    Raises:
        PeerUnavailable: that version is not installed here.
    """
    wanted = folder / "python.txt"
    if not wanted.is_file():
        return sys.executable
    version = wanted.read_text().strip()
    # pyenv's interpreters first: its shims on PATH fail for a version that is not selected.
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = sorted(pyenv.glob(f"{version}*/bin/python{version}"), reverse=True)
    candidates += [Path(found)] if (found := shutil.which(f"python{version}")) else []
    for candidate in candidates:
        if subprocess.run([str(candidate), "-c", ""], capture_output=True).returncode == 0:
            return str(candidate)
    raise PeerUnavailable(f"{folder.name}: needs Python {version}, which is not installed here")


def run_peer(name: str, script: str, *args: str, timeout: float = 3600.0, root: Path = PEERS) -> str:
    """Run ``<root>/<name>/<script>`` under the peer's interpreter, its usage reporting off
    (:data:`NO_TELEMETRY`); its stdout.

    Raises:
        PeerUnavailable: the peer could not be installed, or its script failed (its stderr).
    """
    python = peer_python(name, root)
    try:
        done = subprocess.run(
            [str(python), str(root / name / script), *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=os.environ | NO_TELEMETRY,
        )
    except subprocess.CalledProcessError as exc:
        raise PeerUnavailable(f"{name}: {script} failed:\n{_tail(exc.stderr)}") from exc
    except subprocess.TimeoutExpired as exc:
        raise PeerUnavailable(f"{name}: {script} ran past {exc.timeout:.0f} s") from exc
    return done.stdout


def peer_version(name: str, package: str) -> str:
    """The installed version of ``package`` in the peer's virtualenv."""
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    done = subprocess.run([str(peer_python(name)), "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip()
