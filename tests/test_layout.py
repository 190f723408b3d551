"""The package's shape: no import circle, no upward import, no private state read from outside."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "dopax"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SRC.rglob("*.py")}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Every dopax module ``path`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base]) if base else ".".join(parent)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            # the deepest known module the name refers to
            parts = target.split(".")
            for end in range(len(parts), 0, -1):
                candidate = ".".join(parts[:end])
                if candidate in known:
                    if candidate != name:
                        found.add(candidate)
                    break
    return found


def import_graph() -> dict[str, set[str]]:
    """Return module -> the dopax modules it imports (package ``__init__`` edges included)."""
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, name, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """Return one import cycle, or ``None`` (depth-first search with colours)."""
    colour = dict.fromkeys(graph, 0)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour[nxt] == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if colour[nxt] == 0:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        colour[node] = 2
        return None

    for node in sorted(graph):
        if colour[node] == 0:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle() -> None:
    graph = import_graph()
    # The top-level package re-exports the public surface; its submodules never
    # import it back, so edges into ``dopax`` itself would be cycles too.
    assert "dopax" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


#: Each package's layer: a module imports only from packages of lower layers (or
#: its own). The warning helper below everything; settings and errors; pure
#: kernel, device and sampling code; results and fitting; the engine; the
#: facade; saved models and tables; the command line and the MLflow flavor.
LAYERS = {
    "_version": 0,
    "_warn": -1,
    "config": 0,
    "exceptions": 0,
    "data": 1,
    "kernel": 1,
    "parallel": 2,
    "reductions": 2,
    "output": 3,
    "sampling": 3,
    "answers": 4,
    "effects": 4,
    "inference": 4,
    "streaming": 4,
    "execution": 5,
    "model": 6,
    "persist": 7,
    "tables": 7,
    "cli": 8,
    "mlflow": 8,
    "__main__": 9,
    "dopax": 9,
}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Return every import of a module from another package of an equal or higher layer."""
    return sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if _package(module) != _package(target)
        and LAYERS[_package(target)] >= LAYERS[_package(module)]
    )


def test_lower_layers_never_import_upper_ones() -> None:
    graph = import_graph()
    unknown = sorted({_package(m) for m in graph} - set(LAYERS))
    assert not unknown, f"give the new package(s) {unknown} a layer in LAYERS"
    upward = upward_imports(graph)
    assert not upward, "imports from an equal or higher layer:\n" + "\n".join(upward)


def test_the_layer_check_sees_an_upward_import() -> None:
    graph = {
        "dopax.kernel.spec": {"dopax.model.state", "dopax.exceptions"},
        "dopax.model.state": {"dopax.kernel.spec"},
        "dopax.exceptions": set(),
    }
    assert upward_imports(graph) == ["dopax.kernel.spec -> dopax.model.state"]


MODEL = SRC / "model"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _own_attributes(cls: ast.ClassDef) -> set[str]:
    """Private names a class defines: ``self._x``/``cls._x`` it assigns, its methods and fields."""
    names: set[str] = set()
    for node in ast.walk(cls):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                names.add(node.attr)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign | ast.Assign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return {name for name in names if _private(name)}


def model_private_names() -> set[str]:
    """Every private attribute and method of the classes under ``dopax/model``."""
    names: set[str] = set()
    for path in MODEL.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                names |= _own_attributes(node)
    return names


def private_reads(source: str, private: set[str]) -> list[tuple[int, str]]:
    """Return ``(line, name)`` of each use of a name of ``private`` on another object.

    ``x._name`` counts unless ``x`` is ``self`` or ``cls``, or the use sits in
    a class that defines ``_name`` itself (it may touch its own instances);
    ``getattr(x, "_name")`` and the like count too.
    """
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, own: frozenset[str]) -> None:
        if isinstance(node, ast.ClassDef):
            own = own | _own_attributes(node)
        if isinstance(node, ast.Attribute) and node.attr in private and node.attr not in own:
            receiver = node.value
            if not (isinstance(receiver, ast.Name) and receiver.id in ("self", "cls")):
                found.append((node.lineno, node.attr))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in private
        ):
            found.append((node.lineno, str(node.args[1].value)))
        for child in ast.iter_child_nodes(node):
            visit(child, own)

    visit(ast.parse(source), frozenset())
    return sorted(found)


def test_no_module_outside_the_model_reads_its_private_state() -> None:
    private = model_private_names()
    assert {"_state", "_inference"} <= private
    offenders = [
        f"{path.relative_to(SRC.parent)}:{line}: .{name}"
        for path in sorted(SRC.rglob("*.py"))
        if MODEL not in path.parents
        for line, name in private_reads(path.read_text(), private)
    ]
    assert not offenders, (
        "private attributes of the model read outside dopax/model (use dopax.model.snapshot):\n"
        + "\n".join(offenders)
    )


def test_the_private_state_check_sees_a_read() -> None:
    reads = "def f(model):\n    state = model._state\n    return getattr(model, '_state')\n"
    assert private_reads(reads, {"_state"}) == [(2, "_state"), (3, "_state")]
    own = (
        "class Sink:\n"
        "    def __init__(self):\n"
        "        self._state = 'new'\n"
        "    @classmethod\n"
        "    def attach(cls):\n"
        "        sink = cls.__new__(cls)\n"
        "        sink._state = 'open'\n"
        "        return sink\n"
    )
    assert private_reads(own, {"_state"}) == []
    assert private_reads("def g(x):\n    return x._other\n", {"_state"}) == []


def settings_readers() -> set[str]:
    """Modules that use ``get_config`` (read the global settings)."""
    return {
        name
        for name, path in _modules().items()
        if re.search(r"\bget_config\b", path.read_text()) and name != "dopax.config"
    }


def test_only_the_facade_resolves_a_calls_settings() -> None:
    # A call resolves its settings once, when it starts (the facade, or an
    # ``Output`` built for it); everything below takes them from the request.
    readers = settings_readers()
    deep = sorted(
        name
        for name in readers
        if not name.startswith("dopax.model.") and name != "dopax.execution.request"
    )
    assert not deep, f"modules below the facade read the global settings: {deep}"
    assert "dopax.execution.request" in readers
