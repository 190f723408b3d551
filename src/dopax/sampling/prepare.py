"""Binding a call's inputs to the kernel: row arguments, shared arrays, static values.

Array keyword arguments whose leading length equals the number of rows travel
with ``X`` (they are split into the same batches); other arrays are passed
whole to every batch; everything else is a static (hashable) argument.
Interventions are validated against the kernel's sites and split the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from dopax.config import ExecutionConfig
from dopax.exceptions import ScenarioError
from dopax.sampling.window import ReadWindow

__all__ = [
    "BoundArgs",
    "LazyRows",
    "anchor_rows",
    "bind_args",
    "intervention_row_axes",
    "split_intervention",
    "as_array",
    "read_rows",
]


def _target_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    if jax.config.read("jax_enable_x64"):
        return dtype
    if dtype == np.float64:
        return np.dtype(np.float32)
    if dtype == np.int64:
        return np.dtype(np.int32)
    return dtype


def _row_chunk_starts(source: Any, n_rows: int) -> np.ndarray | None:
    """Return the first row of every chunk of ``source`` along rows, and ``n_rows``.

    Reads the ``chunks`` attribute of Zarr and HDF5 arrays (a tuple of chunk
    lengths) and of dask arrays and dask-backed xarray objects (a tuple of
    per-axis tuples). Returns ``None`` when the source is not chunked.
    """
    chunks = getattr(source, "chunks", None)
    if not chunks or n_rows <= 0:
        return None
    first = chunks[0]
    try:
        if isinstance(first, int | np.integer):
            step = int(first)
            if step <= 0:
                return None
            return np.append(np.arange(0, n_rows, step, dtype=np.int64), n_rows)
        sizes = np.asarray(first, dtype=np.int64)
    except (TypeError, ValueError):
        return None
    if sizes.ndim != 1 or sizes.size == 0 or (sizes <= 0).any() or sizes.sum() != n_rows:
        return None
    return np.concatenate([[0], np.cumsum(sizes)])


class LazyRows:
    """An input read block by block: a Zarr or HDF5 array, a dask array, a memmap.

    Only the rows of the block being computed are ever read, so inputs larger
    than memory stream as well as outputs do. :meth:`rows` reads whole chunks
    of a chunked source and keeps the last span read (up to ``window_bytes``),
    so blocks smaller than the source's chunks decompress each chunk once
    rather than once per block.

    Args:
        source: An object with ``shape``, ``dtype`` and row slicing.
        name: Argument name, for error messages.
        window_bytes: Largest span kept for the next block (the call's
            ``ExecutionConfig.input_window_bytes``).
    """

    def __init__(
        self, source: Any, name: str, window_bytes: int = ExecutionConfig.input_window_bytes
    ) -> None:
        dtype = np.dtype(source.dtype)
        if dtype.kind not in "biuf":
            raise TypeError(f"`{name}` must hold numbers; got dtype {dtype}.")
        self.source = source
        self.shape = tuple(int(s) for s in source.shape)
        self.dtype = _target_dtype(dtype)
        self._starts = _row_chunk_starts(source, self.shape[0]) if self.shape else None
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._window = ReadWindow()
        self._window_bytes = int(window_bytes)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Return rows ``start:stop``, reading whole source chunks where they are small enough.

        Args:
            start: First row.
            stop: One past the last row.
        """

        def load() -> tuple[int, int, np.ndarray, bool]:
            starts = self._starts
            if starts is None or stop <= start:
                return start, stop, self[start:stop], False
            first = int(starts[np.searchsorted(starts, start, side="right") - 1])
            last = int(starts[np.searchsorted(starts, stop, side="left")])
            if (last - first) * self._row_bytes > self._window_bytes:
                return start, stop, self[start:stop], False
            return first, last, self[first:last], True

        return self._window.read(None, start, stop, load)

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        return np.asarray(self.source[index]).astype(self.dtype, copy=False)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def is_lazy(value: Any) -> bool:
    """Return whether ``value`` should be read block by block rather than loaded whole.

    Args:
        value: Any value.
    """
    if isinstance(value, LazyRows):
        return True
    if isinstance(value, jax.Array) or (
        isinstance(value, np.ndarray) and not isinstance(value, np.memmap)
    ):
        return False
    return (
        hasattr(value, "shape")
        and hasattr(value, "dtype")
        and hasattr(value, "__getitem__")
        and len(getattr(value, "shape", ())) >= 1
        and not hasattr(value, "columns")
    )


def _on_one_cpu(value: jax.Array) -> bool:
    devices = list(value.sharding.device_set)
    return len(devices) == 1 and getattr(devices[0], "platform", None) == "cpu"


def read_rows(value: Any, start: int, stop: int) -> Any:
    """Return rows ``start:stop`` of an input as an in-memory array.

    Args:
        value: An in-memory array or a :class:`LazyRows`.
        start: First row.
        stop: One past the last row.
    """
    if isinstance(value, LazyRows):
        return value.rows(start, stop)
    if isinstance(value, jax.Array) and _on_one_cpu(value):
        # a view of the host buffer: slicing the device array would compile a
        # small program per block shape
        return np.asarray(value)[start:stop]
    block = value[start:stop]
    if isinstance(block, np.ndarray | jax.Array):
        return block
    return np.asarray(block)


def anchor_rows(value: Any) -> np.ndarray:
    """Return the anchor rows of an input: its first row, twice.

    Global latent sites are drawn on the anchor rows (row offset 0). Two
    copies of row 0 rather than one, so a kernel that drops the row axis of a
    one-row batch (e.g. with ``.squeeze()``) still sees a row axis.

    Args:
        value: An in-memory array or a :class:`LazyRows` with at least one row.
    """
    head = np.asarray(read_rows(value, 0, 1))
    return np.concatenate([head, head], axis=0)


def as_array(
    value: Any, name: str, window_bytes: int = ExecutionConfig.input_window_bytes
) -> np.ndarray | jax.Array | LazyRows:
    """Convert an array-like (list, tuple, NumPy, JAX, pandas) to an array.

    Zarr, HDF5 and dask arrays and memmaps become :class:`LazyRows`, read
    block by block.

    Args:
        value: The value.
        name: Argument name, for the error message.
        window_bytes: The read window of a :class:`LazyRows`.

    Raises:
        TypeError: If the value is not numeric array-like.
    """
    if isinstance(value, jax.Array | LazyRows):
        return value
    if is_lazy(value):
        return LazyRows(value, name, window_bytes)
    try:
        arr = np.asarray(value)
    except Exception as err:
        raise TypeError(f"`{name}` must be array-like; got {type(value).__name__}.") from err
    if arr.dtype == object or arr.dtype.kind in "USV":
        raise TypeError(
            f"`{name}` must hold numbers; got an array of dtype {arr.dtype}. "
            "Convert it to a numeric array first."
        )
    return arr.astype(_target_dtype(arr.dtype), copy=False)


def _is_arraylike(value: Any) -> bool:
    if isinstance(value, np.ndarray | jax.Array):
        return True
    if hasattr(value, "__array__") and not isinstance(value, str | bytes):
        return True
    if isinstance(value, list | tuple) and value:
        try:
            arr = np.asarray(value)
        except Exception:
            return False
        return arr.dtype.kind in "biuf"
    return False


@dataclasses.dataclass(frozen=True)
class BoundArgs:
    """A call's arguments, sorted by how they travel.

    Attributes:
        n_rows: Number of rows.
        rows: Arrays with a leading row axis (input, output, row kwargs).
        shared: Arrays passed whole to every batch.
        static: Sorted ``(name, value)`` pairs of hashable non-array arguments.
    """

    n_rows: int
    rows: dict[str, Any]
    shared: dict[str, Any]
    static: tuple[tuple[str, Any], ...]


def bind_args(
    param_input: str,
    X: Any,
    param_output: str,
    y: Any,
    kwargs: Mapping[str, Any],
    window_bytes: int,
) -> BoundArgs:
    """Sort the input, output and keyword arguments of a call.

    Args:
        param_input: Name of the kernel's input argument.
        X: The input (array-like with a leading row axis).
        param_output: Name of the kernel's output argument.
        y: The output or ``None``.
        kwargs: Further kernel keyword arguments.
        window_bytes: The read window of inputs read block by block
            (``ExecutionConfig.input_window_bytes``).

    Raises:
        TypeError: For non-numeric arrays or unhashable non-array arguments.
        ValueError: For inputs without a row axis or ``y`` of the wrong length.
    """
    x_arr = as_array(X, "X", window_bytes)
    if x_arr.ndim == 0:
        raise ValueError("`X` must have a leading row axis; got a scalar.")
    n = int(x_arr.shape[0])
    if n == 0:
        raise ValueError(f"`X` has no rows (shape {tuple(x_arr.shape)}); pass at least one row.")
    rows: dict[str, Any] = {param_input: x_arr}
    static: dict[str, Any] = {}
    if y is not None:
        y_arr = as_array(y, "y", window_bytes)
        if y_arr.ndim == 0 or y_arr.shape[0] != n:
            raise ValueError(
                f"`y` must have one entry per row of `X` ({n}); got shape {tuple(y_arr.shape)}."
            )
        rows[param_output] = y_arr
    else:
        static[param_output] = None
    shared: dict[str, Any] = {}
    for name, value in kwargs.items():
        if value is not None and _is_arraylike(value):
            arr = as_array(value, name, window_bytes)
            if arr.ndim >= 1 and arr.shape[0] == n:
                rows[name] = arr
            else:
                shared[name] = arr
        else:
            try:
                hash(value)
            except TypeError as err:
                raise TypeError(
                    f"Keyword argument {name!r} is neither an array nor hashable "
                    f"({type(value).__name__}); pass an array or a hashable value."
                ) from err
            static[name] = value
    return BoundArgs(n, rows, shared, tuple(sorted(static.items())))


def split_intervention(
    intervention: Mapping[str, Any] | None,
    *,
    sites: Mapping[str, int | None],
    n_rows: int,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate an intervention and split it into per-row and shared values.

    Args:
        intervention: Site name to value, or ``None``.
        sites: Every sample site of the kernel with its row axis (``None`` if none).
        n_rows: Number of rows of the call.
        shapes: Each site's shape for the call's rows, to check values against.

    Returns:
        ``(row_values, shared_values)``.

    Raises:
        ScenarioError: For an unknown site or a per-row value of the wrong length.
        TypeError: If ``intervention`` is not a mapping.
    """
    if intervention is None:
        return {}, {}
    if not isinstance(intervention, Mapping):
        raise TypeError(
            "`intervention` must be a dict of site name to value; got "
            f"{type(intervention).__name__}."
        )
    unknown = sorted(set(intervention) - set(sites))
    if unknown:
        raise ScenarioError(
            f"Unknown intervention site(s) {unknown}; the kernel's sample sites are "
            f"{sorted(sites)}."
        )
    row_do: dict[str, Any] = {}
    shared_do: dict[str, Any] = {}
    for name, value in intervention.items():
        arr = as_array(value, f"intervention[{name!r}]")
        axis = sites[name]
        shape = (shapes or {}).get(name)
        pos = _rows_position(name, arr, axis, shape, n_rows)
        if pos is None:
            shared_do[name] = arr
        else:
            row_do[name] = np.moveaxis(np.asarray(arr), pos, 0) if pos else arr
        _check_shape(name, arr, shape if axis != -1 else None)
    return row_do, shared_do


def intervention_row_axes(
    intervention: Mapping[str, Any] | None,
    *,
    sites: Mapping[str, int | None],
    n_rows: int,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> dict[str, int]:
    """Return, for each per-row intervention value, the axis of the value that holds the rows.

    :func:`split_intervention` moves that axis first (rows travel first);
    the forward pass moves it back.

    Args:
        intervention: Site name to value (already validated), or ``None``.
        sites: Every sample site of the kernel with its row axis.
        n_rows: Number of rows of the call.
        shapes: Each site's shape for the call's rows.
    """
    out = {}
    for name, value in (intervention or {}).items():
        pos = _rows_position(
            name, np.asarray(value), sites.get(name), (shapes or {}).get(name), n_rows
        )
        if pos is not None:
            out[name] = pos
    return out


def _rows_position(
    name: str, arr: Any, axis: int | None, shape: tuple[int, ...] | None, n_rows: int
) -> int | None:
    """Return the axis of an intervention value that holds one value per row, or ``None``.

    A value lines up with its site's shape from the right (as it broadcasts):
    the value's axis facing the site's row axis holds the rows when it is as
    long as the call's rows; of length one (or missing) the value is shared
    by every row and may still vary along the site's other axes (e.g. over
    time: a ``(T, 1)`` value for a ``(T, units)`` site).
    """
    if axis is None or arr.ndim == 0:
        return None
    if axis < 0:
        if arr.shape[0] > 1:
            raise ScenarioError(
                f"Per-row values for site {name!r} need a regular row axis; site {name!r} "
                "changes shape with the number of rows in an irregular way. Pass a scalar."
            )
        return None
    # without the site's shape, a value leads with the rows
    pos = 0 if shape is None else axis - (len(shape) - arr.ndim)
    if pos < 0 or pos >= arr.ndim or arr.shape[pos] == 1:
        return None
    if arr.shape[pos] != n_rows:
        where = "its first axis" if pos == 0 else f"axis {pos}, which faces the rows of the site"
        raise ScenarioError(
            f"intervention[{name!r}] has {arr.shape[pos]} entries along {where}, but the call "
            f"has {n_rows} rows; pass one value per row or a scalar, or a value that "
            "broadcasts against the site's shape (e.g. one value per time step)."
        )
    return pos


def _check_shape(name: str, value: Any, want: tuple[int, ...] | None) -> None:
    """Raise unless an intervention value broadcasts to its site's shape ``want``."""
    if want is None:
        return
    try:
        fits = np.broadcast_shapes(tuple(value.shape), want) == tuple(want)
    except ValueError:
        fits = False
    if not fits:
        raise ScenarioError(
            f"intervention[{name!r}] has shape {tuple(value.shape)}, but site {name!r} has "
            f"shape {tuple(want)}; pass a value of shape {tuple(want)}, or one that broadcasts "
            "to it (e.g. a scalar)."
        )
