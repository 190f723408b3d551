"""Layout bookkeeping shared by the sinks: declared variables and index geometry."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import EllipsisType
from typing import Any

import numpy as np
import xarray as xr
import zarr

from dopax.exceptions import StreamingError
from dopax.output.build import tree_from_nodes
from dopax.output.schema import GROUPS, SiteLayout, position_coords, site_dims
from dopax.streaming.sinks.protocol import StaticData

__all__ = ["LayoutSink", "partial_chunks", "pieces", "resolve_index"]


def resolve_index(
    layout: SiteLayout, index: tuple[slice, ...], block_shape: tuple[int, ...]
) -> list[slice]:
    """Return ``index`` as unit-step slices over ``(S, *shape)``, checked against the block."""
    flat_shape = layout.flat_shape
    fewest = 1 if flat_shape else 0  # a 0-d data variable is written whole, by ()
    if not isinstance(index, tuple) or not fewest <= len(index) <= len(flat_shape):
        raise ValueError(
            f"`index` for {layout.group}/{layout.name} must be a tuple of {fewest} to "
            f"{len(flat_shape)} slices; got {index!r}."
        )
    full = (*index, *(slice(None),) * (len(flat_shape) - len(index)))
    resolved = []
    for sl, n in zip(full, flat_shape, strict=True):
        if not isinstance(sl, slice):
            raise TypeError(f"`index` must hold slices only; got {sl!r}.")
        start, stop, step = sl.indices(n)
        if step != 1:
            raise ValueError(f"`index` slices must have step 1; got {sl!r}.")
        resolved.append(slice(start, max(start, stop)))
    expected = tuple(sl.stop - sl.start for sl in resolved)
    if tuple(block_shape) != expected:
        raise ValueError(
            f"Block for {layout.group}/{layout.name} has shape {tuple(block_shape)}, but "
            f"`index` {index!r} selects {expected}."
        )
    return resolved


def pieces(
    layout: SiteLayout, resolved: Sequence[slice]
) -> Iterator[tuple[tuple[int | slice, ...], slice | EllipsisType]]:
    """Split a flat region at chain boundaries.

    Yields ``(region, rows)``: ``region`` indexes the ``(chain, draw, *shape)``
    array and ``rows`` selects the matching leading part of the block. A data
    variable (no chain and draw axes) is one piece: the whole block (``...``,
    which a 0-d block takes too).
    """
    if layout.is_data:
        yield tuple(resolved), ...
        return
    flat, rest = resolved[0], tuple(resolved[1:])
    s, offset = flat.start, 0
    while s < flat.stop:
        chain, d0 = divmod(s, layout.num_draws)
        n = min(layout.num_draws - d0, flat.stop - s)
        yield (chain, slice(d0, d0 + n), *rest), slice(offset, offset + n)
        s += n
        offset += n


def partial_chunks(
    region: tuple[int | slice, ...], full_shape: tuple[int, ...], chunks: tuple[int, ...]
) -> list[tuple[int, ...]]:
    """Return the chunks that ``region`` covers only in part."""
    per_axis: list[list[tuple[int, bool]]] = []
    any_partial = False
    for sel, length, size in zip(region, full_shape, chunks, strict=True):
        a, b = (sel, sel + 1) if isinstance(sel, int) else (sel.start, sel.stop)
        axis = []
        for k in range(a // size, (b - 1) // size + 1):
            whole = a <= k * size and b >= min((k + 1) * size, length)
            any_partial = any_partial or not whole
            axis.append((k, whole))
        per_axis.append(axis)
    if not any_partial:
        return []
    return [
        tuple(k for k, _ in combo)
        for combo in itertools.product(*per_axis)
        if not all(whole for _, whole in combo)
    ]


def draw_chunks(layout: SiteLayout) -> Iterator[tuple[slice, int, slice]]:
    """Yield the chunks of a static variable: ``(flat draws, chain, draws of the chain)``."""
    draws, step = layout.num_draws, layout.chunks[1]
    for chain, start in itertools.product(range(layout.num_chains), range(0, draws, step)):
        stop = min(draws, start + step)
        yield slice(chain * draws + start, chain * draws + stop), chain, slice(start, stop)


def read_stored(value: Any, chain: int, draws: slice) -> np.ndarray:
    """Read ``value[chain, draws]`` of a stored array one source chunk at a time.

    Zarr holds every chunk of one read at once (compressed and decoded); a
    stored posterior chunked along its site's axes too (a per-row latent of
    many rows) is read piece by piece along the first such axis, so a copy
    holds its output and one source chunk.

    Args:
        value: A stored ``(chain, draw, ...)`` array, or any array.
        chain: The chain.
        draws: The draws of the chain.
    """
    shape = tuple(int(n) for n in value.shape)
    if not is_stored(value):
        return np.asarray(value[chain, draws])
    chunks = tuple(int(n) for n in value.chunks)
    cut = next((a for a in range(2, len(shape)) if chunks[a] < shape[a]), None)
    if cut is None:
        return np.asarray(value[chain, draws])
    start, stop, _ = draws.indices(shape[1])
    out = np.empty((max(0, stop - start), *shape[2:]), np.dtype(value.dtype))
    step = int(chunks[cut])
    lead = (slice(None),) * (cut - 2)
    for lo in range(0, shape[cut], step):
        part = slice(lo, min(shape[cut], lo + step))
        out[(slice(None), *lead, part)] = value[(chain, draws, *lead, part)]
    return out


def is_stored(value: Any) -> bool:
    """Whether a static variable is a stored (Zarr) array, read piece by piece."""
    return isinstance(value, zarr.Array)


class LayoutSink:
    """Shared bookkeeping of the sinks: declared variables, state, index mapping."""

    #: Whether stored (Zarr) static arrays stay unread until written piece by
    #: piece (a sink that copies them chunk by chunk); otherwise they are read.
    keeps_stored = False

    def __init__(self) -> None:
        self._layouts: dict[tuple[str, str], SiteLayout] = {}
        self._static: dict[str, dict[str, Any]] = {}
        self._attrs: dict[str, Any] = {}
        self._late_attrs: dict[str, Any] = {}
        self._state = "new"

    def add_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Add root attributes known only once every block is written (before ``close``).

        Args:
            attrs: JSON-serialisable attributes.
        """
        self._check_open()
        self._attrs.update(attrs)
        self._late_attrs.update(attrs)

    def _declare(
        self,
        layouts: Sequence[SiteLayout],
        static: StaticData | None,
        attrs: Mapping[str, Any] | None,
    ) -> None:
        if self._state != "new":
            raise StreamingError(f"{type(self).__name__} can be opened once; it is {self._state}.")
        declared: dict[tuple[str, str], SiteLayout] = {}
        for layout in layouts:
            self._check_group(layout.group)
            key = (layout.group, layout.name)
            if key in declared:
                raise ValueError(f"Variable {layout.group}/{layout.name} is declared twice.")
            if layout.num_chains < 1 or layout.num_draws < 1:
                raise ValueError(f"{layout.group}/{layout.name}: need at least one chain and draw.")
            if len(layout.chunks) != len(layout.full_shape) or min(layout.chunks, default=1) < 1:
                raise ValueError(
                    f"{layout.group}/{layout.name}: `chunks` {layout.chunks} must give a positive "
                    f"size for each of the {len(layout.full_shape)} dimensions."
                )
            np.dtype(layout.dtype)
            declared[key] = layout
        static_arrays: dict[str, dict[str, Any]] = {}
        for group, variables in (static or {}).items():
            self._check_group(group)
            for name, value in variables.items():
                array = value if self.keeps_stored and is_stored(value) else np.asarray(value)
                if array.ndim < 2:
                    raise ValueError(
                        f"Static variable {group}/{name} must have chain and draw axes; "
                        f"got shape {array.shape}."
                    )
                if (group, name) in declared:
                    raise ValueError(f"Variable {group}/{name} is both streamed and static.")
                static_arrays.setdefault(group, {})[name] = array
        self._layouts = declared
        self._static = static_arrays
        self._attrs = dict(attrs or {})
        for group in self._groups():
            self._dims_of(group)

    @staticmethod
    def _check_group(group: str) -> None:
        if group not in GROUPS:
            raise ValueError(f"Unknown group {group!r}; expected one of {GROUPS}.")

    def _groups(self) -> list[str]:
        present = {group for group, _ in self._layouts} | set(self._static)
        return [group for group in GROUPS if group in present]

    def _dims_of(self, group: str) -> dict[str, int]:
        """Return every dimension of ``group`` with its length, checking they agree."""
        dims: dict[str, int] = {}
        names: list[str] = []
        shapes: list[tuple[tuple[str, ...], tuple[int, ...]]] = []
        for (g, name), layout in self._layouts.items():
            if g == group:
                names.append(name)
                shapes.append((layout.dims, layout.full_shape))
        for name, array in self._static.get(group, {}).items():
            names.append(name)
            shapes.append((site_dims(name, array.ndim - 2), array.shape))
        for var_dims, shape in shapes:
            for dim, size in zip(var_dims, shape, strict=True):
                if dims.setdefault(dim, size) != size:
                    raise ValueError(
                        f"Dimension {dim!r} of group {group!r} has length {size} in one "
                        f"variable and {dims[dim]} in another."
                    )
        clashes = sorted(set(names) & set(dims))
        if clashes:
            raise ValueError(f"Variable names {clashes} of group {group!r} clash with dimensions.")
        return dims

    def _tree(
        self,
        make_data: Callable[[SiteLayout], Any],
        root_attrs: Mapping[str, Any],
    ) -> xr.DataTree:
        """Build the result tree in memory, streamed variables given by ``make_data``."""
        nodes: dict[str, xr.Dataset] = {}
        for group in self._groups():
            data_vars: dict[str, tuple[tuple[str, ...], Any]] = {}
            for (g, name), layout in self._layouts.items():
                if g == group:
                    data_vars[name] = (layout.dims, make_data(layout))
            for name, array in self._static.get(group, {}).items():
                data_vars[name] = (site_dims(name, array.ndim - 2), array)
            coords = position_coords(self._dims_of(group))
            nodes[group] = xr.Dataset(data_vars, coords=coords)
        return tree_from_nodes(nodes, root_attrs)

    def _check_open(self) -> None:
        if self._state != "open":
            raise StreamingError(f"Cannot write to a sink that is {self._state}.")

    def _prepare(
        self, group: str, name: str, index: tuple[slice, ...], block: np.ndarray
    ) -> tuple[SiteLayout, np.ndarray, list[slice]]:
        self._check_open()
        try:
            layout = self._layouts[(group, name)]
        except KeyError:
            raise KeyError(f"Variable {group}/{name} was not declared at open.") from None
        array = np.asarray(block)
        dtype = np.dtype(layout.dtype)
        if array.dtype != dtype:
            if not np.can_cast(array.dtype, dtype, casting="same_kind"):
                raise TypeError(
                    f"Block for {group}/{name} has dtype {array.dtype}; expected {dtype}."
                )
            array = array.astype(dtype)
        return layout, array, resolve_index(layout, index, array.shape)
