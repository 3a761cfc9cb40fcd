"""The README's CLI and settings reference, generated from the code so the two cannot drift apart.

    python -m docs.reference           # print the generated sections
    python -m docs.reference --write   # replace them in README.md

Each section sits between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` in the
README; `tests/test_docs.py` fails when a section differs from what this module generates.
"""

from __future__ import annotations

import argparse
import inspect
import io
import re
import tokenize
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[1] / "README.md"
HIDDEN_OPTIONS = {"--help", "--install-completion", "--show-completion"}


def render_cli() -> str:
    """A markdown table of every `refit` command: its usage and the first line of its help."""
    import typer

    from training.cli import app, load_plugins

    load_plugins()
    root = typer.main.get_command(app)
    rows = ["| command | does |", "| --- | --- |"]
    for path, command in _walk(root, ["refit"]):
        usage = " ".join([*path, *(_usage(p) for p in command.params if _shown(p))])
        summary = (command.help or "").strip().split("\n")[0]
        rows.append(f"| `{usage}` | {summary} |".replace("`|", "` |"))
    return "\n".join(rows)


def _walk(command: Any, path: list[str]) -> list[tuple[list[str], Any]]:
    if hasattr(command, "commands"):
        return [
            pair for name in sorted(command.commands) for pair in _walk(command.commands[name], [*path, name])
        ]
    return [(path, command)]


def _shown(param: Any) -> bool:
    return not (set(getattr(param, "opts", [])) & HIDDEN_OPTIONS)


def _usage(param: Any) -> str:
    """``NAME``, ``[NAME]``, ``[--flag]``, ``[--key VALUE]`` or ``LABELS...`` for one parameter."""
    if param.param_type_name == "argument":
        name = param.name.upper() + ("..." if param.nargs == -1 else "")
        return name if param.required else f"[{name}]"
    option = param.opts[0]
    if param.is_flag:
        return f"[{option}]"
    value = param.metavar or param.name.upper().replace("_", "-")
    repeat = " ..." if param.multiple else ""
    return f"[{option} {value}{repeat}]"


def render_settings(cls: type, prefix: str) -> str:
    """A markdown table of one stage's settings: key, environment variable, default, meaning."""
    comments = field_comments(cls)
    rows = ["| key | environment variable | default | meaning |", "| --- | --- | --- | --- |"]
    for name, field in cls.model_fields.items():  # type: ignore[attr-defined]
        default = field.default_factory() if field.default_factory else field.default
        shown = "" if default is None else f"`{_plain(default)}`"
        rows.append(f"| `{name}` | `{prefix}{name.upper()}` | {shown} | {comments.get(name, '')} |")
    return "\n".join(rows)


def _plain(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the class source: on its line, else the comment lines above it."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's comment wins over its base's
        if klass.__module__.split(".")[0] in ("training", "service", "monitoring"):
            comments.update(_comments_in(inspect.getsource(klass)))
    return comments


def _comments_in(source: str) -> dict[str, str]:
    found: dict[str, str] = {}
    above: list[str] = []
    lines = source.splitlines()
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    trailing = {t.start[0]: t.string for t in tokens if t.type == tokenize.COMMENT}
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# ").strip())
            continue
        match = re.match(r"^    (\w+): [^=]+(=|$)", line)
        if match and not stripped.startswith(("def ", "@")):
            comment = trailing.get(number, "")
            text = comment.lstrip("# ").strip() if comment else " ".join(above)
            found[match.group(1)] = text.replace("|", "\\|")
        above = []
    return found


def render_all() -> dict[str, str]:
    """Every generated section by name."""
    from monitoring.settings import MonitorSettings
    from service.settings import ServeSettings
    from training.config import TrainingConfig

    return {
        "cli": render_cli(),
        "settings-train": render_settings(TrainingConfig, "REFIT_TRAIN_"),
        "settings-serve": render_settings(ServeSettings, "REFIT_SERVE_"),
        "settings-monitor": render_settings(MonitorSettings, "REFIT_MONITOR_"),
    }


def section_pattern(name: str) -> re.Pattern[str]:
    """The README section ``name`` with its markers (group 1: its content)."""
    return re.compile(rf"<!-- generated:{name} -->\n(.*?)<!-- /generated:{name} -->", re.DOTALL)


def update_readme(text: str) -> str:
    """``text`` with every generated section replaced by what the code says now."""
    for name, content in render_all().items():
        pattern = section_pattern(name)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no section <!-- generated:{name} -->")
        block = f"<!-- generated:{name} -->\n{content}\n<!-- /generated:{name} -->"  # group 1: content + \n
        text = pattern.sub(lambda _, block=block: block, text)
    return text


def main(argv: list[str] | None = None) -> None:
    """Print the sections, or write them into the README with --write."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write", action="store_true", help="replace the sections in README.md")
    args = parser.parse_args(argv)
    if args.write:
        README.write_text(update_readme(README.read_text(encoding="utf-8")), encoding="utf-8")
        return
    for name, content in render_all().items():
        print(f"<!-- generated:{name} -->\n{content}\n")


if __name__ == "__main__":
    main()
