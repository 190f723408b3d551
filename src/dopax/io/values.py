"""Constructor arguments as JSON: numbers, strings, arrays, functions by reference or code.

:func:`encode` turns a value into JSON-ready data and :func:`decode` turns it
back. Functions and classes become ``{"ref": "module:qualname"}`` when they
import, ``{"code": name}`` when a :class:`~dopax.io.source.CodeFile` holds
them, and ``functools.partial`` objects keep their function and arguments.
With ``closures=True``, a closure made by an importable function (an
optimizer's update rule, a learning-rate schedule) becomes a call of that
function with the arguments read from the closure; whoever asks for it checks
the rebuilt object behaves the same.
"""

from __future__ import annotations

import functools
import inspect
import math
import types
from typing import Any

import numpy as np

from dopax.io.source import CodeFile, NotRecordableError, importable_ref, resolve_ref

__all__ = ["decode", "encode", "maker_call"]

#: Largest array (elements) kept in a JSON document.
_MAX_ARRAY = 100_000


def maker_call(fn: Any, code: CodeFile | None = None) -> dict[str, Any]:
    """Return ``{"call": ref, "kwargs": ...}`` for a closure made by an importable function.

    Args:
        fn: A closure whose qualified name is ``maker.<locals>.inner``.
        code: Where functions of scripts go.

    Raises:
        NotRecordableError: If ``fn`` was not made that way or an argument is unknown.
    """
    qualname = getattr(fn, "__qualname__", "")
    outer, sep, inner = qualname.partition(".<locals>.")
    if not sep or "<locals>" in inner or not isinstance(fn, types.FunctionType):
        raise NotRecordableError(f"{fn!r} is not a closure made by an importable function")
    ref = f"{fn.__module__}:{outer}"
    try:
        maker = resolve_ref(ref)
    except Exception as err:
        raise NotRecordableError(f"the function that made {qualname!r} does not import") from err
    maker = inspect.unwrap(maker)
    cells = dict(
        zip(fn.__code__.co_freevars, (c.cell_contents for c in fn.__closure__ or ()), strict=True)
    )
    kwargs: dict[str, Any] = {}
    for name, param in inspect.signature(maker).parameters.items():
        if name in cells:
            kwargs[name] = encode(cells[name], code, closures=True)
        elif param.default is inspect.Parameter.empty:
            what = f"the closure {qualname!r} does not keep the argument {name!r}"
            raise NotRecordableError(what)
    return {"call": ref, "kwargs": kwargs}


def encode(value: Any, code: CodeFile | None = None, *, closures: bool = False) -> Any:
    """Return JSON-ready data that :func:`decode` turns back into ``value``.

    Args:
        value: A constructor argument.
        code: Where functions and classes of scripts go (none: they fail).
        closures: Whether closures made by importable functions are recorded
            as calls (the caller checks the rebuilt object).

    Raises:
        NotRecordableError: For values none of the forms can hold.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, list):
        return [encode(v, code, closures=closures) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return {"tuple": [encode(v, code, closures=closures) for v in value]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: encode(v, code, closures=closures) for k, v in value.items()}}
    if isinstance(value, np.generic) or (
        hasattr(value, "__array__") and hasattr(value, "dtype") and hasattr(value, "shape")
    ):
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf" or arr.size > _MAX_ARRAY:
            raise NotRecordableError(f"an array of dtype {arr.dtype} and shape {arr.shape}")
        return {"array": arr.ravel().tolist(), "dtype": arr.dtype.name, "shape": list(arr.shape)}
    if isinstance(value, functools.partial):
        return {
            "partial": encode(value.func, code, closures=closures),
            "args": [encode(v, code, closures=closures) for v in value.args],
            "kwargs": {k: encode(v, code, closures=closures) for k, v in value.keywords.items()},
        }
    if callable(value):
        ref = importable_ref(value)
        if ref is not None:
            return {"ref": ref}
        if closures and getattr(value, "__closure__", None):
            return maker_call(value, code)
        if code is not None:
            return {"code": code.add(value)}
    raise NotRecordableError(f"{value!r} (a {type(value).__name__}) has no recorded form")


def decode(data: Any, code: types.ModuleType | None = None) -> Any:
    """Return the value that :func:`encode` recorded.

    Args:
        data: What :func:`encode` returned (read back from JSON).
        code: The loaded code file, for ``{"code": name}`` entries.
    """
    if isinstance(data, list):
        return [decode(v, code) for v in data]
    if not isinstance(data, dict):
        return data
    if "float" in data:
        return float(data["float"])
    if "tuple" in data:
        return tuple(decode(v, code) for v in data["tuple"])
    if "dict" in data:
        return {k: decode(v, code) for k, v in data["dict"].items()}
    if "array" in data:
        return np.asarray(data["array"], dtype=data["dtype"]).reshape(data["shape"])
    if "partial" in data:
        fn = decode(data["partial"], code)
        args = [decode(v, code) for v in data["args"]]
        kwargs = {k: decode(v, code) for k, v in data["kwargs"].items()}
        return functools.partial(fn, *args, **kwargs)
    if "ref" in data:
        return resolve_ref(data["ref"])
    if "call" in data:
        maker = resolve_ref(data["call"])
        return maker(**{k: decode(v, code) for k, v in data["kwargs"].items()})
    if "code" in data:
        if code is None:
            raise ValueError(f"{data['code']!r} lives in a code file, but none was loaded.")
        return getattr(code, data["code"])
    raise ValueError(f"Unknown recorded value {data!r}.")
