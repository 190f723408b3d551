"""Index geometry shared by the sinks: flat indices resolved, blocks cut into chunks."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from types import EllipsisType
from typing import Any

import numpy as np
import zarr

from dopax.output.schema import SiteLayout

__all__ = ["is_stored", "partial_chunks", "pieces", "resolve_index"]


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
