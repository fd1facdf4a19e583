"""The package's import structure: no cycles, and no import that goes up the layers.

Layers, lowest first: shared, protos → device, seqrec → cloud → simulations → cli, benchmarks.
A module may import its own layer or a lower one; the device runtime imports neither the torch
side (`seqrec`) nor the cloud, and loads neither torch nor transformers (a phone has neither);
the cloud does not import the device. Every `import` counts, at module level or inside a
function, and `importlib.import_module` with a literal name too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {
    "shared": 0,
    "protos": 0,
    "device": 1,
    "seqrec": 1,
    "cloud": 2,
    "simulations": 3,
    "cli": 4,
    "benchmarks": 4,
}
# (importer package, imported package): the device runtime and the torch side are siblings, and
# so are the device and the cloud.
FORBIDDEN = {("device", "cloud"), ("cloud", "device"), ("device", "seqrec"), ("seqrec", "device")}
# Libraries a device never loads: torch and the cloud's model stack.
DEVICE_FORBIDDEN_LIBRARIES = ("torch", "transformers", "peft")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path) -> set[str]:
    """Every module `path` imports: `import` statements, at module level or in a function,
    and `importlib.import_module("…")` / `__import__("…")` calls with a literal name."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.add(first.value)
    return found


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in ("__import__", "import_module")
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def project_imports(path: Path) -> set[str]:
    """Modules of this project that `path` imports (absolute imports; the layout has no
    relative ones)."""
    return {n for n in imported_names(path) if n.split(".")[0] in LAYERS}


def graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (names that are not modules, e.g. a class
    in `from cloud.base import GeneratorBase`, fold into their module)."""
    files = [p for package in LAYERS for p in (ROOT / package).rglob("*.py")]
    modules = {module_name(p): p for p in files}
    edges = {}
    for name, path in modules.items():
        targets = set()
        for imported in project_imports(path):
            while imported not in modules and "." in imported:
                imported = imported.rsplit(".", 1)[0]
            if imported in modules and imported != name:
                targets.add(imported)
        edges[name] = targets
    return edges


def test_no_import_goes_up_the_layers():
    wrong = []
    for module, targets in graph().items():
        package = module.split(".")[0]
        for target in targets:
            other = target.split(".")[0]
            if LAYERS[other] > LAYERS[package] or (package, other) in FORBIDDEN:
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                # a package importing its own submodules through __init__ is not a cycle
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle():
    assert find_cycle(graph()) is None


@pytest.mark.parametrize(
    ("edges", "cycle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, None),
    ],
)
def test_the_cycle_finder_finds_cycles(edges, cycle):
    assert find_cycle(edges) == cycle


def device_side_modules(edges: dict[str, set[str]]) -> set[str]:
    """The device package and every project module it imports, directly or not."""
    seen, todo = set(), [m for m in edges if m.split(".")[0] == "device"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += edges.get(module, ())
    return seen


def test_the_device_side_never_names_the_cloud_model_libraries():
    modules = {module_name(p): p for pkg in LAYERS for p in (ROOT / pkg).rglob("*.py")}
    wrong = [
        f"{module} imports {name}"
        for module in sorted(device_side_modules(graph()))
        for name in imported_names(modules[module])
        if name.split(".")[0] in DEVICE_FORBIDDEN_LIBRARIES
    ]
    assert wrong == []


def test_importing_every_device_module_loads_no_cloud_model_library():
    """What the interpreter really loads (a library can arrive through another one)."""
    names = sorted(module_name(p) for p in (ROOT / "device").rglob("*.py"))
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {DEVICE_FORBIDDEN_LIBRARIES!r}))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "source",
    [
        "import importlib\nimportlib.import_module('cloud.base')\n",
        "from importlib import import_module\ndef f():\n    return import_module('cloud')\n",
        "__import__('cloud.server')\n",
    ],
)
def test_dynamic_imports_are_seen(tmp_path, source):
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert {n.split(".")[0] for n in project_imports(path)} == {"cloud"}
