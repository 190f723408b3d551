"""Declaring a Zarr result: its groups and arrays, created in one trip to Zarr's event loop."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zarr
from zarr.abc.codec import BytesBytesCodec
from zarr.abc.store import Store

from dopax.output.schema import SiteLayout
from dopax.streaming.sinks.codecs import attr_value, fill_value

__all__ = ["ArraySpec", "create_nodes", "static_layout"]


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """One Zarr array of a result, as ``ZarrSink.open`` declares it."""

    group: str
    name: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype[Any]
    dims: tuple[str, ...]
    compressors: tuple[BytesBytesCodec, ...]
    attributes: Mapping[str, Any]


async def create_nodes(
    store: Store,
    root_attrs: Mapping[str, Any],
    groups: Sequence[str],
    arrays: Sequence[ArraySpec],
) -> list[zarr.AsyncArray[Any]]:
    """Create the root group, its child groups and their arrays, concurrently.

    The metadata is what ``xarray``'s ``to_zarr`` writes for the same tree
    (asserted in the tests): dimension names, floating-point variables with
    a NaN fill value and the others with Zarr's default, and no other
    attributes than the variables' own.
    """
    root = await zarr.api.asynchronous.create_group(
        store=store,
        zarr_format=3,
        attributes={k: attr_value(v) for k, v in root_attrs.items()},
    )
    made = await asyncio.gather(*(root.create_group(group) for group in groups))
    nodes = dict(zip(groups, made, strict=True))
    return list(
        await asyncio.gather(
            *(
                nodes[spec.group].create_array(
                    spec.name,
                    shape=spec.shape,
                    chunks=spec.chunks,
                    dtype=spec.dtype,
                    compressors=spec.compressors,
                    dimension_names=spec.dims,
                    attributes=dict(spec.attributes),
                    config={"write_empty_chunks": True},
                    **fill_value(spec.dtype),
                )
                for spec in arrays
            )
        )
    )


def static_layout(group: str, name: str, array: Any, chunk_bytes: int) -> SiteLayout:
    """Return the layout of a static variable: whole draws per chunk, at most ``chunk_bytes``.

    ``array`` is ``(chain, draw, ...)``: a NumPy array or a stored (Zarr) one.
    """
    chains, draws = int(array.shape[0]), int(array.shape[1])
    rest = tuple(int(n) for n in array.shape[2:])
    dtype = np.dtype(array.dtype)
    per_draw = max(int(np.prod(rest, dtype=np.int64)) * dtype.itemsize, 1)
    draw_chunk = max(1, min(draws, chunk_bytes // per_draw))
    return SiteLayout(group, name, chains, draws, rest, dtype.str, (1, draw_chunk, *rest))
