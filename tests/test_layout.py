"""The layout the README promises: imports follow the data flow, no cycles, small modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("training", "service", "monitoring")
# Upstream packages a package may import (the data flows training -> service -> monitoring).
ALLOWED = {
    "training": {"training"},
    "service": {"training", "service"},
    "monitoring": {"training", "service", "monitoring"},
    "demo": {"training", "service", "monitoring", "demo"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in (*LIBRARY, "demo") for p in (ROOT / package).glob("*.py")}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports, wherever the import statement is (functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            found |= {n for n in names if n in known} or ({node.module} & known)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names} & known
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, set(modules)) for name, path in modules.items()}


def test_imports_follow_the_data_flow(graph: dict[str, set[str]]) -> None:
    wrong = {
        (module, imported)
        for module, imported_modules in graph.items()
        for imported in imported_modules
        if imported.split(".")[0] not in ALLOWED[module.split(".")[0]]
    }
    assert not wrong, sorted(wrong)


def test_no_library_module_imports_a_cli_module_or_the_demo(graph: dict[str, set[str]]) -> None:
    def is_cli(module: str) -> bool:  # `cli`, or a command group of its own such as `feedback_cli`
        return module.split(".")[-1].endswith("cli")

    wrong = {
        (module, imported)
        for module, imported_modules in graph.items()
        if module.split(".")[0] in LIBRARY and not is_cli(module) and module.split(".")[-1] != "__main__"
        for imported in imported_modules
        if is_cli(imported) or imported.split(".")[0] == "demo"
    }
    assert not wrong, sorted(wrong)


def test_there_is_no_import_cycle(graph: dict[str, set[str]]) -> None:
    import graphlib

    sorter = graphlib.TopologicalSorter({m: graph[m] - {m} for m in graph})
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_modules_stay_small() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in project_modules().items()}
    assert not {name: n for name, n in sizes.items() if n > 400}


def test_every_package_says_what_it_is() -> None:
    for package in (*LIBRARY, "demo", "benchmarks", "docs", "tests"):
        docstring = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text()))
        assert docstring and docstring.splitlines()[0].endswith("."), f"{package}/__init__.py: {docstring!r}"


@pytest.mark.parametrize(
    "module",
    sorted(
        module_name(p)
        for package in (*LIBRARY, "demo", "benchmarks", "docs")
        for p in (ROOT / package).glob("*.py")
        # __main__ runs the CLI; service.app builds the service from the environment (its tests do).
        if p.stem != "__main__" and module_name(p) != "service.app"
    ),
)
def test_every_module_imports_without_doing_work(module: str) -> None:
    """Scripts run by hand (benchmarks, docs) are imported here, so a broken import shows at once."""
    import importlib

    importlib.import_module(module)


HEAVY = ("torch", "transformers", "sklearn")


@pytest.mark.parametrize(
    "code",
    [
        # `bentoml serve` imports the service in its own process only to read its configuration,
        # before any worker starts: every second spent there is a second more for each start.
        "import service.app",
        # A command that loads no model.
        "from training.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass",
    ],
    ids=["bentoml-serve-process", "refit-models-list"],
)
def test_starting_a_server_or_listing_models_imports_no_model_library(code: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    report = f"import sys\nsys.argv = ['refit', 'models', 'list', '--home', {str(tmp_path)!r}]\n{code}\n"
    report += f"print(sorted(set({HEAVY!r}) & set(sys.modules)))"
    command = [sys.executable, "-c", report]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout[-2000:]
