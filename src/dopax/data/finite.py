"""Refusing NaN and Inf in per-row inputs, naming the column and counting the rows.

A NaN or an infinity in an input row does not stop a kernel: it gives NaN
draws, and summaries of them (a mean, an interval, the probability of a
positive effect) that look like numbers or quietly read 0. Where inputs come
from outside (a served request, a file on the command line,
``compare_scenarios``) they are checked first, block by block so that an
array read from disk is never loaded whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from dopax.exceptions import InputError

__all__ = ["check_finite", "nonfinite_rows"]

#: Values checked per block of an array read from disk.
_BLOCK_VALUES = 2**22


def nonfinite_rows(values: Any) -> tuple[int, int, list[int]]:
    """Count the rows of ``values`` holding a NaN or an infinity.

    Args:
        values: An array-like with a leading row axis (NumPy, memory-mapped
            or Zarr); only floating-point ones can hold NaN or Inf.

    Returns:
        The number of such rows, the first one (``-1`` if none), and the
        flat trailing positions (columns) that hold one, in order.
    """
    dtype = np.dtype(getattr(values, "dtype", np.asarray(values).dtype))
    shape = tuple(np.shape(values))
    if dtype.kind not in "fc" or not shape:
        return 0, -1, []
    n = shape[0]
    per_row = max(int(np.prod(shape[1:], dtype=np.int64)), 1)
    step = max(1, _BLOCK_VALUES // per_row)
    count, first = 0, -1
    columns = np.zeros(per_row, dtype=bool)
    for start in range(0, n, step):
        block = np.asarray(values[start : start + step]).reshape(-1, per_row)
        bad = ~np.isfinite(block)
        rows = bad.any(axis=1)
        found = int(rows.sum())
        if found:
            if first < 0:
                first = start + int(np.argmax(rows))
            count += found
            columns |= bad.any(axis=0)
    return count, first, [int(i) for i in np.flatnonzero(columns)]


def _column(name: str, shape: tuple[int, ...], flat: int) -> str:
    if not shape:
        return name
    return f"{name}_{'_'.join(str(int(i)) for i in np.unravel_index(flat, shape))}"


def check_finite(
    args: Mapping[str, Any],
    n_rows: int,
    source: str,
    *,
    names: Iterable[str] | None = None,
) -> None:
    """Raise if a per-row argument holds NaN or Inf, naming its columns and the rows.

    Args:
        args: Kernel arguments; those with ``n_rows`` rows are checked.
        n_rows: Rows of the call.
        source: How to name the input in the message ("the input table").
        names: The arguments to check (default: all).

    Raises:
        InputError: Naming the argument's columns (``X_1``; a 1-D argument is
            its own column), how many rows hold NaN or Inf and the first.
    """
    wanted = set(args) if names is None else set(names)
    for name, value in args.items():
        shape = tuple(np.shape(value))
        if name not in wanted or not shape or shape[0] != n_rows:
            continue
        count, first, columns = nonfinite_rows(value)
        if count:
            shown = [_column(name, shape[1:], c) for c in columns[:5]]
            more = f" and {len(columns) - 5} more" if len(columns) > 5 else ""
            what = "column " if len(columns) == 1 else "columns "
            raise InputError(
                f"{source}: {what}{', '.join(shown)}{more} (kernel argument {name!r}) hold NaN "
                f"or Inf in {count} of {n_rows} rows (the first is row {first}). Remove or "
                "impute those rows: a model gives no meaningful draws for them."
            )
