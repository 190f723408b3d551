"""Constructor arguments as JSON: numbers, strings, arrays, functions by reference or code.

:func:`encode` turns a value into JSON-ready data and :func:`decode` turns it
back. Functions and classes become ``{"ref": "module:qualname"}`` when they
import, ``{"code": name}`` when a :class:`~dopax.persist.source.CodeFile` holds
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
from collections.abc import Callable
from typing import Any

import numpy as np

from dopax.persist.source import CodeFile, NotRecordableError, importable_ref, resolve_ref

__all__ = ["UntrustedError", "decode", "encode", "maker_call"]

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


class UntrustedError(ValueError):
    """A recorded value names code that loading runs only when the caller trusts it.

    Attributes:
        where: Where the value sits in the record (``inference.optim.kwargs.step_size``).
        what: What it names (``subprocess:run``, a function of the code file).
    """

    def __init__(self, where: str, what: str) -> None:
        super().__init__(f"{where} names {what}")
        self.where = where
        self.what = what


def _array(data: dict[str, Any], where: str) -> np.ndarray:
    dtype = np.dtype(str(data.get("dtype")))
    if dtype.kind not in "biuf":
        raise ValueError(f"{where}: an array of dtype {dtype} (only numbers are recorded).")
    values, shape = data["array"], data.get("shape")
    if not isinstance(values, list) or not isinstance(shape, list):
        raise ValueError(f"{where}: a recorded array needs a list of values and a shape.")
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in shape):
        raise ValueError(f"{where}: the shape {shape} is not a list of non-negative integers.")
    if math.prod(shape) != len(values) or len(values) > _MAX_ARRAY:
        raise ValueError(f"{where}: {len(values)} values do not fill the shape {shape}.")
    return np.asarray(values, dtype=dtype).reshape(shape)


def decode(
    data: Any,
    code: types.ModuleType | None = None,
    *,
    allow: Callable[[str], bool] | None = None,
    where: str = "value",
) -> Any:
    """Return the value that :func:`encode` recorded.

    Args:
        data: What :func:`encode` returned (read back from JSON).
        code: The loaded code file, for ``{"code": name}`` entries.
        allow: Which references may be resolved and called; ``None`` trusts
            every one (and the code file). With a test, a reference it refuses
            and any entry of the code file raise :class:`UntrustedError`
            before anything is imported or called.
        where: Where ``data`` sits, for messages.

    Raises:
        UntrustedError: For a reference ``allow`` refuses, or code, when ``allow`` is given.
        ValueError: For a record that no :func:`encode` wrote.
    """
    if isinstance(data, list):
        return [decode(v, code, allow=allow, where=f"{where}[{i}]") for i, v in enumerate(data)]
    if data is None or isinstance(data, bool | int | float | str):
        return data
    if not isinstance(data, dict) or len(data) == 0:
        raise ValueError(f"{where}: unknown recorded value {data!r}.")
    if "float" in data:
        text = str(data["float"])
        if text.strip().lower().lstrip("+-") not in ("inf", "nan", "infinity"):
            raise ValueError(f"{where}: {text!r} is not a recorded non-finite float.")
        return float(text)
    if "tuple" in data:
        items = data["tuple"]
        if not isinstance(items, list):
            raise ValueError(f"{where}: a recorded tuple needs a list.")
        return tuple(
            decode(v, code, allow=allow, where=f"{where}[{i}]") for i, v in enumerate(items)
        )
    if "dict" in data:
        return _decode_dict(data["dict"], code, allow, where)
    if "array" in data:
        return _array(data, where)
    if "partial" in data:
        fn = decode(data["partial"], code, allow=allow, where=f"{where}.partial")
        if not callable(fn):
            raise ValueError(f"{where}: a recorded partial of {fn!r}, which is not callable.")
        args = decode(data.get("args", []), code, allow=allow, where=f"{where}.args")
        kwargs = _decode_dict(data.get("kwargs", {}), code, allow, f"{where}.kwargs")
        return functools.partial(fn, *args, **kwargs)
    if "ref" in data:
        _check(data["ref"], allow, where)
        return resolve_ref(data["ref"])
    if "call" in data:
        _check(data["call"], allow, where)
        kwargs = _decode_dict(data.get("kwargs", {}), code, allow, f"{where}.kwargs")
        return resolve_ref(data["call"])(**kwargs)
    if "code" in data:
        if allow is not None:
            raise UntrustedError(where, f"{data['code']!r} of the saved code file")
        if code is None:
            raise ValueError(f"{data['code']!r} lives in a code file, but none was loaded.")
        return getattr(code, data["code"])
    raise ValueError(f"{where}: unknown recorded value {data!r}.")


def _decode_dict(
    data: Any,
    code: types.ModuleType | None,
    allow: Callable[[str], bool] | None,
    where: str,
) -> dict[str, Any]:
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise ValueError(f"{where}: a recorded mapping needs string keys.")
    return {k: decode(v, code, allow=allow, where=f"{where}.{k}") for k, v in data.items()}


def _check(ref: Any, allow: Callable[[str], bool] | None, where: str) -> None:
    if not isinstance(ref, str) or ":" not in ref:
        raise ValueError(f"{where}: {ref!r} is not a `module:name` reference.")
    if allow is not None and not allow(ref):
        raise UntrustedError(where, repr(ref))
