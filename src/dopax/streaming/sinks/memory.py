"""The in-memory sink: preallocated NumPy arrays."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from dopax.output.schema import CHUNKED_GROUPS, SiteLayout
from dopax.streaming.sinks.base import Sink
from dopax.streaming.sinks.layout import pieces

__all__ = ["MemorySink"]


class MemorySink(Sink):
    """Sink into preallocated NumPy arrays; :meth:`close` returns an in-memory DataTree.

    Args:
        chunked: Return the draws of :data:`~dopax.output.schema.CHUNKED_GROUPS`
            as Dask arrays over the in-memory data, chunked as a persisted
            result stores them (``store="memory"``), so the result reads like
            a persisted one; otherwise plain NumPy arrays (``*_on_batch``).
    """

    def __init__(self, *, chunked: bool = False) -> None:
        super().__init__()
        self._chunked = chunked
        self._arrays: dict[tuple[str, str], np.ndarray] = {}

    def _start(self) -> None:
        """Allocate one array per streamed variable."""
        self._arrays = {
            key: np.zeros(layout.full_shape, dtype=layout.dtype)
            for key, layout in self._layouts.items()
        }
        self._state = "open"

    def write(self, group: str, name: str, index: tuple[slice, ...], block: np.ndarray) -> None:
        """Copy one block into its variable (:meth:`Sink.write`; thread-safe, disjoint blocks)."""
        layout, array, resolved = self._prepare(group, name, index, block)
        target = self._arrays[(layout.group, layout.name)]
        for region, rows in pieces(layout, resolved):
            target[region] = array[rows]

    def close(self) -> xr.DataTree:
        """Return the result as a DataTree of NumPy arrays."""
        self._check_open()
        arrays = self._arrays

        def data(layout: SiteLayout) -> Any:
            array = arrays[(layout.group, layout.name)]
            if not (self._chunked and layout.group in CHUNKED_GROUPS):
                return array
            import dask.array as da

            chunks = tuple(
                max(1, min(c, n)) for c, n in zip(layout.chunks, layout.full_shape, strict=True)
            )
            return da.from_array(array, chunks=chunks, name=False)

        tree = self._tree(data, self._attrs)
        self._arrays = {}
        self._state = "closed"
        return tree

    def discard(self) -> None:
        """Nothing to remove: the result lives in memory only."""

    def abort(self) -> None:
        """Drop the arrays; the sink can no longer be written or closed."""
        self._arrays = {}
        if self._state != "closed":
            self._state = "aborted"
