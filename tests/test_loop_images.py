"""`refit demo --images` as the README shows it: the image loop in a child process, exit 0 only
if it closed (a darker light adapted to without labels, then a new defect type retrained on
labels; each promoted and served)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.demo]  # the whole image loop: training, three processes, minutes


def test_refit_demo_images_closes_the_loop(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    refit = str(Path(sys.executable).with_name("refit"))
    env = {**os.environ, "BENTOML_HOME": str(out / "bentoml"), "COLUMNS": "140"}
    with (tmp_path / "demo.log").open("w") as log:
        # From a folder of the user's, with a relative --out: the service and the monitor the demo
        # starts run elsewhere, and the retrains read the logged images from a CSV elsewhere again.
        result = subprocess.run(
            [refit, "demo", "--images", "--out", out.name],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=900,
        )
    output = (tmp_path / "demo.log").read_text(errors="replace")
    assert result.returncode == 0, output[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["closed"] and summary["production_version"] != summary["first_version"]
    assert sum(phase["failed"] for phase in summary["traffic"].values()) == 0
    statuses = [c["status"] for c in summary["checks"]]
    assert statuses.index("ok") < statuses.index("drift"), statuses
    adapted, retrained = (r for r in summary["retrains"] if r["outcome"] == "promoted")
    assert adapted["trigger"] == "drift (adapt)" and adapted["numbers"]["adaptation"] == "self-train", adapted
    assert "0 feedback labels on the window" in adapted["reason"] and "drifted inputs" in adapted["reason"]
    assert retrained["trigger"] == "drift" and retrained["numbers"]["feedback_train_rows"] > 0
    light, defect = summary["traffic"]["darker light"], summary["traffic"]["new defect"]
    assert light["feedback"] == 0 and adapted["candidate_version"] in light["by_version"]
    assert summary["production_version"] == retrained["numbers"]["shipped_version"]
    by_version = defect["accuracy_by_version"]
    assert by_version[summary["production_version"]] > by_version[adapted["candidate_version"]]
    assert "surface-inspection" in output and "a darker light, no labels yet" in output
    assert "adaptation (drift): promoted" in output
