"""dimint.core is a functional core: no I/O, no clocks, no threads, no global randomness.

Proved two ways. Statically, every module under dimint/core is parsed and each import is checked
against a deny-list of modules that touch sockets, files, processes, clocks or threads, and every
call through the ``random`` module is checked to be the ``random.Random`` constructor (a seeded
generator passed in) rather than a module-level function drawing from hidden global state.
Dynamically, importing all of dimint.core in a fresh interpreter must not load zmq, kazoo or simpy.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "dimint" / "core"

FORBIDDEN_MODULES = {
    "socket",
    "zmq",
    "kazoo",
    "simpy",
    "time",
    "threading",
    "asyncio",
    "subprocess",
    "os",
    "datetime",
    "select",
    "selectors",
    "multiprocessing",
    "concurrent",
    "signal",
    "shutil",
    "tempfile",
    "pathlib",
    "io",
    "urllib",
    "http",
    "requests",
    "sched",
    "queue",
    "_thread",
}
FORBIDDEN_BUILTINS = {"open", "input", "print", "exec", "eval", "breakpoint"}


def _core_files() -> list[Path]:
    files = sorted(CORE.rglob("*.py"))
    assert files, "dimint/core has no modules"
    return files


def test_core_imports_nothing_that_does_io() -> None:
    offences = []
    for path in _core_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in FORBIDDEN_MODULES:
                    offences.append(f"{path.name}:{node.lineno} imports {name}")
    assert not offences, "\n".join(offences)


def test_core_draws_no_global_randomness_and_calls_no_io_builtins() -> None:
    offences = []
    for path in _core_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "random":
                bad = [a.name for a in node.names if a.name != "Random"]
                if bad:
                    offences.append(f"{path.name}:{node.lineno} imports random.{bad}")
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and func.value.id == "random"
                and func.attr != "Random"
            ):
                offences.append(f"{path.name}:{node.lineno} calls random.{func.attr}()")
            if isinstance(func, ast.Name) and func.id in FORBIDDEN_BUILTINS:
                offences.append(f"{path.name}:{node.lineno} calls {func.id}()")
    assert not offences, "\n".join(offences)


def test_importing_core_loads_no_io_framework() -> None:
    modules = [
        ".".join(("dimint", "core", *p.relative_to(CORE).with_suffix("").parts)).removesuffix(".__init__")
        for p in _core_files()
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(','.join(sorted(m for m in ('zmq', 'kazoo', 'simpy') if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"dimint.core pulled in: {result.stdout.strip()}"
