"""Functions as importable ``module:qualname`` references, or as a code file of their source.

A kernel defined in an importable module is saved as a reference. One defined
in a script (``__main__``) or a notebook is saved as a code file: its source,
the source of the script's functions and classes it calls, an import line for
every module and importable object it reads, and its constant globals. Only
closures, lambdas and functions that read other objects (an array held in a
global, say) cannot be written this way; :class:`NotRecordableError` says which.
"""

from __future__ import annotations

import ast
import dis
import hashlib
import importlib
import inspect
import linecache
import math
import sys
import textwrap
import types
from collections.abc import Iterator
from typing import Any

__all__ = ["CodeFile", "NotRecordableError", "importable_ref", "load_code", "resolve_ref"]

#: Name prefix of the modules that loaded code files run in.
CODE_MODULE_PREFIX = "dopax_saved_code_"


class NotRecordableError(ValueError):
    """An object that neither a reference nor a code file can record; the message says why."""


def resolve_ref(ref: str) -> Any:
    """Import and return the object named by a ``module:qualname`` reference.

    Args:
        ref: The reference.
    """
    module, _, qualname = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def importable_ref(obj: Any) -> str | None:
    """Return ``module:qualname`` if importing it gives ``obj`` back, else ``None``.

    Objects of ``__main__`` and of loaded code files are never references.

    Args:
        obj: A function, class or other named object.
    """
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        return None
    if module == "__main__" or module.startswith(CODE_MODULE_PREFIX) or "<" in qualname:
        return None
    ref = f"{module}:{qualname}"
    try:
        found = resolve_ref(ref)
    except Exception:
        return None
    return ref if found is obj else None


def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _global_loads(fn: types.FunctionType) -> set[str]:
    """Return the global names ``fn``'s code reads (nested functions included)."""
    names = set()
    for code in _code_objects(fn.__code__):
        for ins in dis.get_instructions(code):
            if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME") and isinstance(ins.argval, str):
                names.add(ins.argval)
    return names


def _names(nodes: list[Any]) -> set[str]:
    return {
        n.id
        for node in nodes
        if node is not None
        for n in ast.walk(node)
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
    }


def _definition_names(obj: Any, source: str) -> set[str]:
    """Names a definition reads when it runs: decorators, defaults, base classes, bodies."""
    tree = ast.parse(source)
    node = tree.body[0]
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        args = node.args
        return _names([*node.decorator_list, *args.defaults, *args.kw_defaults]) | _global_loads(
            obj
        )
    if isinstance(node, ast.ClassDef):
        names = _names([*node.decorator_list, *node.bases, *(k.value for k in node.keywords)])
        names |= _names([s for s in node.body if not isinstance(s, ast.FunctionDef)])
        for value in vars(obj).values():
            fn = getattr(value, "__func__", getattr(value, "fget", value))
            if isinstance(fn, types.FunctionType):
                names |= _global_loads(fn)
        return names
    raise NotRecordableError(f"the source of {obj!r} is not a definition")


def _constant(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float | complex | str | bytes):
        return True
    if isinstance(value, tuple | frozenset):
        return all(_constant(v) for v in value)
    return False


def _literal(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return f"float({str(value)!r})"
    if isinstance(value, tuple):
        return "(" + "".join(f"{_literal(v)}, " for v in value) + ")"
    if isinstance(value, frozenset):
        return "frozenset({" + ", ".join(_literal(v) for v in value) + "})"
    return repr(value)


def _why_not(obj: Any) -> str | None:
    """Return why the source of ``obj`` cannot stand in a code file, or ``None``."""
    name = getattr(obj, "__qualname__", repr(obj))
    if isinstance(obj, types.FunctionType):
        if obj.__name__ == "<lambda>":
            return f"`{name}` is a lambda"
        if obj.__closure__:
            free = ", ".join(repr(v) for v in obj.__code__.co_freevars)
            return f"`{name}` is a closure over {free}"
    elif not isinstance(obj, type):
        return f"{obj!r} is neither a function nor a class"
    return None


class CodeFile:
    """The source of functions and classes that no import can reach, made self-contained."""

    def __init__(self) -> None:
        self._imports: dict[str, str] = {}
        self._constants: dict[str, str] = {}
        self._defs: dict[str, str] = {}
        self._objects: dict[str, Any] = {}
        self._aliases: dict[str, str] = {}
        self.origins: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self._defs)

    def add(self, obj: Any) -> str:
        """Add a function or class (and what it reads) and return its name in the file.

        Nothing is added when it fails.

        Raises:
            NotRecordableError: If its source is unavailable, or it is a closure or a
                lambda, or it reads a global that is neither a module, an
                importable object, a constant, nor another recordable definition.
        """
        before = self.checkpoint()
        try:
            return self._add(obj)
        except NotRecordableError:
            self.rollback(before)
            raise

    def checkpoint(self) -> tuple[dict[str, Any], ...]:
        """Return what the file holds now, for :meth:`rollback`."""
        return tuple(
            dict(d)
            for d in (self._imports, self._constants, self._defs, self._objects, self._aliases)
        )

    def rollback(self, parts: tuple[dict[str, Any], ...]) -> None:
        """Return to what :meth:`checkpoint` saw."""
        self._imports, self._constants, self._defs, self._objects, self._aliases = parts

    def _add(self, obj: Any) -> str:
        why = _why_not(obj)
        if why is not None:
            raise NotRecordableError(why)
        name = obj.__name__
        if name in self._objects:
            if self._objects[name] is obj:
                return str(name)
            raise NotRecordableError(f"two different definitions are named {name!r}")
        try:
            source = textwrap.dedent(inspect.getsource(obj))
        except (OSError, TypeError) as err:
            what = f"the source of `{obj.__qualname__}` is not available"
            raise NotRecordableError(what) from err
        self._objects[name] = obj  # before its globals: definitions may refer to each other
        namespace = getattr(obj, "__globals__", None)
        if namespace is None:
            namespace = vars(sys.modules.get(obj.__module__, types.ModuleType("_")))
        for global_name in sorted(_definition_names(obj, source)):
            if global_name in namespace and global_name != name:
                self._bind(global_name, namespace[global_name], obj)
        self._defs[name] = source
        module = sys.modules.get(obj.__module__)
        origin = getattr(module, "__origin__", None) or inspect.getsourcefile(obj)
        if origin:
            self.origins.add(str(origin))
        return str(name)

    def _bind(self, name: str, value: Any, owner: Any) -> None:
        if name in self._imports or name in self._constants or name in self._aliases:
            return
        if isinstance(value, types.ModuleType):
            module = value.__name__
            if module == "__main__" or module.startswith(CODE_MODULE_PREFIX):
                raise NotRecordableError(f"`{owner.__qualname__}` reads the script module {name!r}")
            line = f"import {module}" if module == name else f"import {module} as {name}"
            self._imports[name] = line
            return
        ref = importable_ref(value)
        if ref is not None and "." not in ref.partition(":")[2]:
            module, _, qualname = ref.partition(":")
            alias = "" if qualname == name else f" as {name}"
            self._imports[name] = f"from {module} import {qualname}{alias}"
            return
        if _constant(value):
            self._constants[name] = f"{name} = {_literal(value)}"
            return
        target = inspect.unwrap(value) if callable(value) else value
        if isinstance(target, types.FunctionType | type) and ref is None:
            added = self._add(target)
            if added != name:
                self._aliases[name] = f"{name} = {added}"
            return
        raise NotRecordableError(
            f"`{owner.__qualname__}` reads the global {name!r} (a {type(value).__name__}), "
            "which a code file cannot hold; pass it as an argument or import it from a module"
        )

    def text(self, header: str) -> str:
        """Return the file's text.

        Args:
            header: A comment line (without ``#``) saying where the code came from.
        """
        parts = [f"# {header}", "from __future__ import annotations", ""]
        parts += sorted(self._imports.values())
        if self._constants:
            parts += ["", *self._constants.values()]
        for source in self._defs.values():
            parts += ["", "", source.rstrip("\n")]
        if self._aliases:
            parts += ["", *self._aliases.values()]
        return "\n".join(parts) + "\n"


def load_code(text: str, label: str) -> types.ModuleType:
    """Run a code file's text as a module of its own and return the module.

    The same text loads once per process. Its lines are registered with
    :mod:`linecache`, so ``inspect.getsource`` (and saving the model again) works.

    Args:
        text: The file's text.
        label: Where it came from (the module's ``__file__``).
    """
    name = CODE_MODULE_PREFIX + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    module = sys.modules.get(name)
    if module is not None:
        return module
    filename = f"<{name}>"
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
    module = types.ModuleType(name)
    module.__file__ = filename
    module.__dict__["__origin__"] = label
    sys.modules[name] = module
    try:
        exec(compile(text, filename, "exec"), module.__dict__)
    except BaseException:
        del sys.modules[name]
        raise
    return module
