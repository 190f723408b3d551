"""The input schema of a model: what its fitting call passed, argument by argument.

A saved model records it so that tables (a pandas DataFrame, a CSV or
Parquet file) can be bound to the kernel's arguments without the code that
fitted it: per-row arguments with their dtype and trailing shape, arrays
passed whole, and static values.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from dopax.sampling.prepare import BoundArgs

__all__ = ["ArgSchema", "InputSchema", "input_schema"]


@dataclasses.dataclass(frozen=True)
class ArgSchema:
    """One array argument.

    Attributes:
        name: The kernel argument.
        dtype: NumPy dtype name (``"float32"``, ``"int32"``, ``"bool"``, ...).
        shape: Trailing shape after the row axis (per-row arguments) or the
            whole shape (arrays passed whole).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ArgSchema:
        """Read a dict written by :meth:`to_json`."""
        return cls(str(data["name"]), str(data["dtype"]), tuple(int(s) for s in data["shape"]))


@dataclasses.dataclass(frozen=True)
class InputSchema:
    """The arguments of a model's fitting call, without the output.

    Attributes:
        rows: Per-row arguments, the input first.
        shared: Arrays passed whole to every batch.
        static: Sorted ``(name, value)`` pairs of static (hashable) arguments.
    """

    rows: tuple[ArgSchema, ...]
    shared: tuple[ArgSchema, ...] = ()
    static: tuple[tuple[str, Any], ...] = ()

    def row(self, name: str) -> ArgSchema | None:
        """Return the per-row argument ``name``, or ``None``."""
        return next((a for a in self.rows if a.name == name), None)


def input_schema(bound: BoundArgs, param_input: str, param_output: str) -> InputSchema:
    """Return the schema of a call's bound arguments, leaving out the output.

    Args:
        bound: The call's bound arguments.
        param_input: Name of the kernel's input argument (listed first).
        param_output: Name of the kernel's output argument (left out).
    """

    def arg(name: str, value: Any, whole: bool) -> ArgSchema:
        shape = tuple(int(s) for s in np.shape(value))
        return ArgSchema(name, np.dtype(value.dtype).name, shape if whole else shape[1:])

    names = sorted(bound.rows, key=lambda k: (k != param_input, k))
    rows = tuple(arg(k, bound.rows[k], False) for k in names if k != param_output)
    shared = tuple(arg(k, v, True) for k, v in sorted(bound.shared.items()))
    static = tuple((k, v) for k, v in bound.static if k != param_output)
    return InputSchema(rows, shared, static)
