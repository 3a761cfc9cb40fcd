"""Peer systems for side-by-side benchmarks, each in its own virtualenv.

``benchmarks/peers/<name>/requirements.txt`` pins a peer and everything it installs; the first
use creates ``benchmarks/peers/<name>/.venv`` from it (a ``torch`` pin is installed first, on its
own, so that pip takes the same local CPU wheel as Refit's), so that no peer's dependencies enter
Refit's. The peer's scripts, beside its requirements, run under that interpreter and exchange
files (Parquet, JSON) with the benchmark: they import nothing of Refit.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PEERS = Path(__file__).resolve().parent
INSTALL_TIMEOUT_S = 1800.0


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
    steps = [[sys.executable, "-m", "venv", "--clear", str(venv)]]
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


def run_peer(name: str, script: str, *args: str, timeout: float = 3600.0) -> str:
    """Run ``benchmarks/peers/<name>/<script>`` under the peer's interpreter; its stdout.

    Raises:
        PeerUnavailable: the peer could not be installed, or its script failed (its stderr).
    """
    python = peer_python(name)
    try:
        done = subprocess.run(
            [str(python), str(PEERS / name / script), *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
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
