"""Tables bound to kernel arguments, the one place columns are named.

A per-row argument with no trailing shape (``t``) is the column ``t``; one
with trailing shape ``(k,)`` (``X``) is the columns ``X_0 .. X_{k-1}``; higher
shapes flatten in C order (``Z_0_0``, ``Z_0_1``, ...). The saved model's input
schema says which arguments exist and their dtypes; without one, columns are
matched to the kernel's parameters by these names.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from dopax.sampling.inputs import ArgSchema, InputSchema

__all__ = ["arg_columns", "bind_frame", "check_required", "column_range", "with_static_defaults"]


def arg_columns(arg: ArgSchema) -> list[str]:
    """Return the column names of a per-row argument."""
    if not arg.shape:
        return [arg.name]
    return [f"{arg.name}_{'_'.join(str(i) for i in idx)}" for idx in np.ndindex(*arg.shape)]


def column_range(arg: ArgSchema) -> tuple[str, str]:
    """Return the first and last column names of a per-row argument (without listing them)."""
    if not arg.shape:
        return arg.name, arg.name
    first = f"{arg.name}_{'_'.join('0' for _ in arg.shape)}"
    last = f"{arg.name}_{'_'.join(str(max(n - 1, 0)) for n in arg.shape)}"
    return first, last


def _inferred(columns: Iterable[str], names: Iterable[str]) -> list[ArgSchema]:
    """Per-row arguments read off the column names (no recorded schema)."""
    cols = [str(c) for c in columns]
    found = []
    for name in names:
        if name in cols:
            found.append(ArgSchema(name, "float32", ()))
            continue
        pattern = re.compile(rf"{re.escape(name)}_(\d+)")
        idx = sorted(int(m.group(1)) for c in cols if (m := pattern.fullmatch(c)))
        if idx:
            found.append(ArgSchema(name, "float32", (max(idx) + 1,)))
    return found


def _parameters(kernel: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(kernel).parameters)


def bind_frame(
    frame: pd.DataFrame,
    schema: InputSchema | None,
    kernel: Callable[..., Any],
    param_output: str,
    source: str = "the input",
) -> dict[str, np.ndarray]:
    """Return the per-row kernel arguments held by a table's columns.

    Columns that no argument names are ignored.

    Args:
        frame: The table.
        schema: The saved model's input schema, or ``None`` to match the
            kernel's parameters by column names.
        kernel: The kernel.
        param_output: Name of the output argument (never read).
        source: How to name the table in messages.

    Raises:
        ValueError: Naming the argument whose columns are missing or not numeric.
    """
    if schema is not None:
        rows = list(schema.rows)
    else:
        rows = _inferred(frame.columns, [p for p in _parameters(kernel) if p != param_output])
    columns = {str(c): c for c in frame.columns}
    args = {}
    for arg in rows:
        wanted = int(np.prod(arg.shape, dtype=np.int64))
        if wanted > len(columns):  # cannot all be there: say so without naming each
            first, last = column_range(arg)
            raise ValueError(
                f"Kernel argument {arg.name!r} needs {wanted} columns ({first} .. {last}); "
                f"{source} has {len(columns)}."
            )
        names = arg_columns(arg)
        missing = [c for c in names if c not in columns]
        if missing:
            if len(missing) == len(names) and schema is not None and arg.shape:
                hint = f"columns {names[0]} .. {names[-1]}"
            else:
                hint = "column(s) " + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise ValueError(f"Kernel argument {arg.name!r} is missing from {source}: add {hint}.")
        block = frame[[columns[c] for c in names]]
        try:
            values = block.to_numpy(dtype=np.dtype(arg.dtype))
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"Kernel argument {arg.name!r}: {source} columns {names[:5]} are not all "
                f"numbers convertible to {arg.dtype} ({err})."
            ) from err
        args[arg.name] = values.reshape(len(frame), *arg.shape)
    return args


def with_static_defaults(args: Mapping[str, Any], schema: InputSchema | None) -> dict[str, Any]:
    """Return ``args`` plus the static values of the fitting call that ``args`` leave out."""
    out = dict(args)
    for name, value in schema.static if schema is not None else ():
        out.setdefault(name, value)
    return out


def check_required(
    args: Mapping[str, Any], kernel: Callable[..., Any], param_output: str, source: str
) -> None:
    """Raise naming the first kernel argument without a default that ``args`` lack.

    Args:
        args: The arguments found.
        kernel: The kernel.
        param_output: Name of the output argument (never required).
        source: How to name the input in the message.
    """
    for name, param in _parameters(kernel).items():
        if name != param_output and param.default is param.empty and name not in args:
            raise ValueError(f"Kernel argument {name!r} is missing from {source}.")
    unknown = sorted(set(args) - set(_parameters(kernel)))
    if unknown:
        raise ValueError(
            f"{source} holds {unknown}, which the kernel does not take; its arguments are "
            f"{sorted(p for p in _parameters(kernel) if p != param_output)}."
        )
