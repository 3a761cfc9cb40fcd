"""Usage reporting of the libraries Refit runs: off unless the user opted in.

BentoML posts an event to its analytics endpoint on every model save (each Refit version) and
every 12 hours while serving, unless ``BENTOML_DO_NOT_TRACK`` is ``true``: it compares the value
with ``"true"`` (any case), so the common ``1`` leaves tracking on. Evidently's UI (the monitor's
dashboards) reports its use unless ``DO_NOT_TRACK`` is set to anything, which the Hugging Face hub
also honours. A user's training runs, servers and dashboards are theirs: Refit turns both off
wherever it saves a model or starts a process, and leaves BentoML's on only when its variable says
so plainly (``false``, ``0``, ``no`` or ``off``).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

BENTOML_VARIABLE = "BENTOML_DO_NOT_TRACK"
OPTED_IN = frozenset({"false", "0", "no", "off"})
DO_NOT_TRACK = "DO_NOT_TRACK"  # https://consoledonottrack.com: Evidently reads any value as "off"


def turn_off_usage_tracking(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set ``BENTOML_DO_NOT_TRACK=true`` unless it opts in, and ``DO_NOT_TRACK=1`` unless set.

    Args:
        environ: the environment to change: this process's (before BentoML first reads it, which
            it does once), or the one a server or dashboard will be started with.
    """
    if environ.get(BENTOML_VARIABLE, "").strip().lower() not in OPTED_IN:
        environ[BENTOML_VARIABLE] = "true"
    environ.setdefault(DO_NOT_TRACK, "1")
