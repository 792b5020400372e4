"""The import graph has floors: a module imports only from its own floor or the ones below.

    5  engine.cli                       dispatches to everything below
    4  bench                            measures everything below
    3  engine.training, paper, ...      services that run the engine loop
    2  engine.backtest, engine.options  the engine loop; options -> its configuration
    1  feeds, strategies, engine.model  the parts the loop is made of; engine.metrics and
                                        engine.study, the maths on what it produces
    0  engine.domain, engine._core      the vocabulary: quote, instrument, calendar, time, ...

Every import counts, including those inside functions (a lazy import is still a dependency). A
module the table does not place fails the test, so a new module has to be given a floor.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "feeds", "strategies", "bench")

# Longest matching prefix wins.
FLOORS: dict[str, int] = {
    "engine.domain": 0,
    "engine._core": 0,
    "feeds": 1,
    "strategies": 1,
    "engine.model": 1,
    "engine.metrics": 1,
    "engine.progress": 1,
    "engine.study": 1,  # array maths on backtest results: numpy, statsmodels, engine.domain/metrics only
    "engine.overfit": 1,
    "engine.mid_trace": 1,
    "engine.backtest": 2,
    "engine.options": 2,
    "engine.journal": 3,
    "engine.report": 3,
    "engine.compare": 3,  # nextick compare: runs results through metrics and report.write_outputs
    "engine.html_report": 3,
    "engine.paper": 3,
    "engine.reconcile": 3,
    "engine.record": 3,
    "engine.ingest": 3,
    "engine.training": 3,
    "engine.sweep": 3,
    "engine.model_study": 4,  # nextick study: trains (training), sweeps (sweep), reports (html_report)
    "bench": 4,
    "engine.cli": 5,
}


def floor_of(module: str) -> int | None:
    if module == "engine":
        return 0  # engine/__init__.py: the version string only; its submodules have their own floors
    parts = module.split(".")
    for k in range(len(parts), 0, -1):
        floor = FLOORS.get(".".join(parts[:k]))
        if floor is not None:
            return floor
    return None


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return name == "engine._core" or path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, project module) for every import in ``source``; ``from engine import _core`` names
    ``engine._core``, relative imports are resolved against ``module``."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((node.lineno, sub if is_module(sub) else base))
    return [(line, m) for line, m in out if m.split(".")[0] in PACKAGES]


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    own = floor_of(module)
    if own is None:
        return [f"{module}: not placed on a floor (add it to FLOORS in tests/test_layers.py)"]
    bad = []
    for line, target in imported_modules(source, module, is_package):
        floor = floor_of(target)
        if floor is None:
            bad.append(f"{module}:{line} imports {target}, which is on no floor")
        elif floor > own:
            bad.append(f"{module}:{line} (floor {own}) imports {target} (floor {floor})")
    return bad


def project_modules() -> list[Path]:
    files = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if pkg == "bench" and (path.name.startswith("test_") or path.name == "conftest.py"):
                continue  # pytest suites, not importable modules
            files.append(path)
    return files


def test_no_module_imports_from_a_floor_above_its_own():
    bad = []
    for path in project_modules():
        bad += violations(path.read_text(), module_name(path), path.name == "__init__.py")
    assert not bad, "imports from a higher floor:\n" + "\n".join(bad)


def test_every_floor_is_populated():
    floors = {floor_of(module_name(p)) for p in project_modules()}
    assert floors == set(range(6))


@pytest.mark.parametrize(
    "module, source, expect",
    [
        ("engine.domain.quote", "from engine.backtest import Engine\n", "floor 0) imports engine.backtest (floor 2)"),
        ("feeds.replay", "def f():\n    from engine.paper import PaperTrader\n", "imports engine.paper (floor 3)"),
        ("engine.backtest", "from engine import cli\n", "imports engine.cli (floor 5)"),
        ("engine.domain.source", "from . import quote\nfrom ..model import weights\n", "imports engine.model.weights (floor 1)"),
        ("engine.whatever", "import numpy\n", "not placed on a floor"),
    ],
)
def test_the_check_catches_an_upward_import(module, source, expect):
    assert any(expect in v for v in violations(source, module)), violations(source, module)


def test_sideways_and_downward_imports_pass():
    assert violations("from engine.domain.quote import QUOTE_DTYPE\nfrom feeds.replay import FileReplay\n", "feeds.catalog") == []
