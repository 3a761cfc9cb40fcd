"""The README's generated reference sections match the code they describe."""

from __future__ import annotations

import pytest

from docs.reference import README, render_all, section_pattern


@pytest.mark.parametrize("name", sorted(render_all()))
def test_the_readme_section_matches_the_code(name: str) -> None:
    found = section_pattern(name).search(README.read_text(encoding="utf-8"))
    assert found, f"README.md lacks <!-- generated:{name} -->"
    assert found.group(1).rstrip("\n") == render_all()[name], (
        f"README section {name!r} differs from the code: run `python -m docs.reference --write`"
    )


def test_the_cli_table_has_every_flag_of_the_documented_commands() -> None:
    table = render_all()["cli"]
    assert "`refit drift [--since SINCE] [--report REPORT] [--model MODEL] [--home HOME]" in table
    assert "`refit retrain [--model MODEL] [--home HOME]" in table
    assert "`refit models add-label NAME LABELS... [--home HOME]`" in table


def test_settings_tables_give_defaults_variables_and_meanings() -> None:
    serve = render_all()["settings-serve"]
    assert "| `max_chars` | `REFIT_SERVE_MAX_CHARS` | `4000` |" in serve
    monitor = render_all()["settings-monitor"]
    assert "| `keep_checks` | `REFIT_MONITOR_KEEP_CHECKS` | `500` |" in monitor
    assert all(row.count("|") == 5 and not row.endswith("|  |") for row in monitor.splitlines()[2:])
