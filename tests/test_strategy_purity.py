"""Strategies are pure: the import graph of ``strategies/`` (every module, rule_engine too)
reaches no worker runtime, store, replay engine or CLI, and no module that reads a clock, a
file, the environment or the network; importing all of them starts nothing and writes
nothing."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "strategies"

FORBIDDEN_PACKAGES = {
    "eventstore": "the event store (a composition root loads what a strategy needs)",
    "services": "the workers (they host strategies, not the other way round)",
    "replay": "the replay engines",
    "cli": "the command line",
    "bench": "the benchmarks",
    "nats": "the network",
}
FORBIDDEN_STDLIB = {
    **dict.fromkeys(("os", "sys", "io", "pathlib", "glob", "shutil", "tempfile"), "files/env"),
    **dict.fromkeys(("tomllib", "sqlite3", "shelve", "dbm", "fileinput"), "files"),
    **dict.fromkeys(("time", "sched"), "the clock"),
    **dict.fromkeys(("random", "secrets", "uuid"), "unseeded randomness or the clock"),
    **dict.fromkeys(
        ("socket", "ssl", "http", "urllib", "ftplib", "smtplib", "selectors"), "the network"
    ),
    **dict.fromkeys(
        ("subprocess", "multiprocessing", "threading", "concurrent", "asyncio", "signal"),
        "processes, threads or an event loop",
    ),
}
FORBIDDEN_CALLS = {
    "open": "reads or writes a file",
    "input": "reads the terminal",
    "print": "writes the terminal",
    "breakpoint": "stops for a debugger",
}
CLOCK_METHODS = {"now", "utcnow", "today", "fromtimestamp"}
SEEDED_NUMPY_RANDOM = {"default_rng", "Generator", "PCG64", "SeedSequence"}
"""numpy.random names that take an explicit seed; anything else uses the global RNG."""


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import, relative ones resolved."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            yield node.lineno, ".".join([*base, *([node.module] if node.module else [])])


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def violations(source: str, module: str, where: str, is_package: bool = False) -> Iterator[str]:
    tree = ast.parse(source, where)
    for line, name in imported(tree, module, is_package):
        top = name.split(".")[0]
        reason = FORBIDDEN_PACKAGES.get(top) or FORBIDDEN_STDLIB.get(top)
        if reason:
            yield f"{where}:{line}: imports {name} ({reason})"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in FORBIDDEN_CALLS:
            yield f"{where}:{node.lineno}: calls {func.id}() ({FORBIDDEN_CALLS[func.id]})"
        elif isinstance(func, ast.Attribute):
            dotted = _dotted(func)
            if func.attr in CLOCK_METHODS and "date" in dotted.lower():
                yield f"{where}:{node.lineno}: calls {dotted}() (reads the clock)"
            parts = dotted.split(".")
            if len(parts) >= 2 and parts[-2] == "random" and parts[0] in {"np", "numpy"}:
                if parts[-1] not in SEEDED_NUMPY_RANDOM:
                    yield f"{where}:{node.lineno}: calls {dotted}() (the global RNG)"
                elif parts[-1] == "default_rng" and not (node.args or node.keywords):
                    yield f"{where}:{node.lineno}: calls {dotted}() without a seed"


def test_the_checker_sees_what_it_forbids() -> None:
    text = (
        "import os\nfrom eventstore.bus import Bus\nimport numpy as np\n"
        "from datetime import datetime\n"
        "def f():\n    open('x')\n    datetime.now()\n    np.random.rand()\n"
        "    np.random.default_rng()\n    np.random.default_rng(7)\n"
    )
    found = list(violations(text, "strategies.sample", "sample.py"))
    assert [v.split(": ", 1)[1].split(" (")[0] for v in found] == [
        "imports os",
        "imports eventstore.bus",
        "calls open()",
        "calls datetime.now()",
        "calls np.random.rand()",
        "calls np.random.default_rng() without a seed",
    ]


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_strategy_module_imports_and_calls_nothing_impure(path: Path) -> None:
    where = str(path.relative_to(ROOT))
    found = violations(path.read_text(), module_name(path), where, path.name == "__init__.py")
    assert list(found) == []


def test_importing_every_strategy_module_loads_no_runtime_and_writes_nothing(
    tmp_path: Path,
) -> None:
    names = [module_name(p) for p in modules()]
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN_PACKAGES)!r})\n"
        "print(','.join(bad))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
    assert list(tmp_path.iterdir()) == []
