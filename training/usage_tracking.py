"""BentoML's usage tracking: off unless the user opted in.

BentoML posts an event to its analytics endpoint on every model save (each Refit version) and
every 12 hours while serving, unless ``BENTOML_DO_NOT_TRACK`` is ``true``: it compares the value
with ``"true"`` (any case), so the common ``1`` leaves tracking on. A user's training runs and
servers are theirs; Refit turns tracking off wherever it saves a model or starts a server, and
leaves it on only when the variable says so plainly (``false``, ``0``, ``no`` or ``off``).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

VARIABLE = "BENTOML_DO_NOT_TRACK"
OPTED_IN = frozenset({"false", "0", "no", "off"})


def turn_off_usage_tracking(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set ``BENTOML_DO_NOT_TRACK=true`` in ``environ`` unless it opts in to tracking.

    Args:
        environ: the environment to change: this process's (before BentoML first reads it, which
            it does once), or the one a server will be started with.
    """
    if environ.get(VARIABLE, "").strip().lower() not in OPTED_IN:
        environ[VARIABLE] = "true"
