"""Usage reporting of BentoML and Evidently stays off unless the user's environment opts in."""

from __future__ import annotations

import pytest

from training.usage_tracking import turn_off_usage_tracking


@pytest.mark.parametrize(
    ("given", "bentoml"),
    [(None, "true"), ("1", "true"), ("yes", "true"), ("TRUE", "true"), ("false", "false"), ("Off", "Off")],
)
def test_bentoml_tracking_is_off_unless_its_variable_opts_in(given: str | None, bentoml: str) -> None:
    environ = {} if given is None else {"BENTOML_DO_NOT_TRACK": given}
    turn_off_usage_tracking(environ)
    assert environ["BENTOML_DO_NOT_TRACK"] == bentoml


def test_do_not_track_is_set_for_evidently_and_a_users_value_is_kept() -> None:
    fresh: dict[str, str] = {}
    turn_off_usage_tracking(fresh)
    assert fresh["DO_NOT_TRACK"] == "1"
    kept = {"DO_NOT_TRACK": "yes"}
    turn_off_usage_tracking(kept)
    assert kept["DO_NOT_TRACK"] == "yes"
