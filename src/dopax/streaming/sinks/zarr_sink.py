"""The Zarr sink: a new Zarr (format 3) store with consolidated metadata, written by chunks.

A store is complete only once its root attribute
:data:`~dopax.output.store.COMPLETE_ATTR` is ``True``, written last by :meth:`ZarrSink.close`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr
import zarr.errors
from zarr.abc.store import Store

from dopax.config import ExecutionConfig
from dopax.output.cleanup import removal_failed
from dopax.output.location import Location
from dopax.output.schema import POSITION_ATTRS, SiteLayout
from dopax.output.store import COMPLETE_ATTR, open_result
from dopax.streaming.fileio import FileWriter
from dopax.streaming.sinks.base import Sink
from dopax.streaming.sinks.codecs import chunk_encoder, codec_for, compressors_for
from dopax.streaming.sinks.declare import ArraySpec, create_nodes
from dopax.streaming.sinks.declare import static_layout as make_static_layout
from dopax.streaming.sinks.direct import write_whole_chunk
from dopax.streaming.sinks.layout import (
    draw_chunks,
    partial_chunks,
    pieces,
    read_stored,
)
from dopax.streaming.sinks.zarr_io import (
    FolderGuard,
    GuardedLocalStore,
    finish_store,
    remove_written,
    run_to_end,
)

__all__ = ["ZarrSink"]

logger = logging.getLogger("dopax")


class ZarrSink(Sink):
    """Sink into a new Zarr (format 3) store: a local folder or a given store.

    :meth:`open` writes the metadata of every variable, the coordinates, the
    static groups and the root attributes; :meth:`write` then writes blocks
    straight into the arrays, every chunk stored even when it equals the fill
    value (a missing chunk therefore always means missing data). Concurrent
    writes may share a chunk only if they do not overlap; such partial chunk
    writes are serialised per chunk. :meth:`close` consolidates the metadata,
    then sets the root attribute :data:`~dopax.output.store.COMPLETE_ATTR`,
    and returns :func:`~dopax.output.store.open_result` of the store.

    Args:
        path: A folder to create; it must not exist or be empty. The root
            attribute ``artifact_path`` records its absolute path.
        store: A Zarr store to write into instead of a folder (e.g.
            :class:`zarr.storage.MemoryStore`); it must be empty.
        config: The call's execution settings (codecs, writes, locks); the
            defaults of :class:`~dopax.config.ExecutionConfig` when not given.
        keepalive: An object the tree returned by :meth:`close` keeps
            referenced (see :func:`~dopax.output.store.open_result`).
        label: What the root attribute ``artifact_path`` records for a store
            (its URL); a folder records its absolute path.

    Raises:
        TypeError: If not exactly one of ``path`` and ``store`` is given.
        FileExistsError: If ``path`` exists and is not an empty folder.
    """

    keeps_stored = True

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        store: Store | None = None,
        config: ExecutionConfig | None = None,
        keepalive: object | None = None,
        label: str | None = None,
    ) -> None:
        super().__init__()
        if (path is None) == (store is None):
            raise TypeError("Pass exactly one of `path` and `store`.")
        self._config = config if config is not None else ExecutionConfig()
        self._keepalive = keepalive
        self._path = Path(path).expanduser().resolve() if path is not None else None
        self._store: Store | None = store
        self._label = label
        if self._path is not None:
            self._check_new_folder(self._path)
        self._created_folder = False
        self._owns_target = False
        self._guard: FolderGuard | None = None
        self._arrays: dict[tuple[str, str], zarr.Array[Any]] = {}
        self._stripes = [threading.Lock() for _ in range(self._config.lock_stripes)]
        self._encoders: dict[tuple[str, str], Callable[[np.ndarray], Any]] = {}
        self._pending_static: list[tuple[SiteLayout, Any]] = []
        self._pending_coords: list[tuple[zarr.Array[Any], int]] = []
        self._static_thread: threading.Thread | None = None
        self._static_error: BaseException | None = None
        self._files = FileWriter(
            direct=self._config.direct_io, piece_bytes=self._config.direct_io_piece_bytes
        )

    @classmethod
    def attach(
        cls, where: Location, layouts: Sequence[SiteLayout], config: ExecutionConfig | None = None
    ) -> ZarrSink:
        """Open a store another sink declared to write blocks into it (Dask workers).

        Such a sink writes blocks only; it never creates, closes or removes the store.

        Args:
            where: The store's location.
            layouts: The layouts of the streamed variables it will write.
            config: Execution settings.
        """
        sink = cls.__new__(cls)
        Sink.__init__(sink)
        if where.path is not None:
            guard = FolderGuard(where.path)
            ZarrSink.__init__(sink, store=GuardedLocalStore(guard), config=config)
            sink._path = where.path
            sink._guard = guard
        else:
            ZarrSink.__init__(sink, store=where.open_store(read_only=False), config=config)
        assert sink._store is not None
        root = zarr.open_group(sink._store, mode="r+", zarr_format=3)
        for layout in layouts:
            array = root[f"{layout.group}/{layout.name}"]
            assert isinstance(array, zarr.Array)
            sink._layouts[(layout.group, layout.name)] = layout
            sink._arrays[(layout.group, layout.name)] = array
            sink._encoders[(layout.group, layout.name)] = chunk_encoder(array.compressors)  # type: ignore[arg-type]
        sink._state = "open"
        return sink

    @staticmethod
    def _check_new_folder(path: Path) -> None:
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise FileExistsError(
                f"{path} already exists and is not an empty folder; results are written to "
                "a new folder only."
            )

    def _start(self) -> None:
        """Create the store: metadata, coordinates, static groups and root attributes."""
        # Static variables (the posterior, often the largest of them) are
        # declared like streamed ones and written by a background thread while
        # the draws are computed; close() waits for it.
        self._pending_static = []
        for group, variables in self._static.items():
            for name, value in variables.items():
                static_layout = make_static_layout(
                    group, name, value, self._config.static_chunk_bytes
                )
                self._layouts[(group, name)] = static_layout
                self._pending_static.append((static_layout, value))
        self._static = {}
        root_attrs = dict(self._attrs)
        if self._path is not None:
            self._check_new_folder(self._path)
            self._created_folder = not self._path.exists()
            self._path.mkdir(parents=True, exist_ok=True)
            self._guard = FolderGuard(self._path)
            self._store = GuardedLocalStore(self._guard)
            root_attrs["artifact_path"] = str(self._path)
        elif self._label is not None:
            root_attrs["artifact_path"] = self._label
        assert self._store is not None
        if not run_to_end(self._store.is_empty("")):
            raise FileExistsError(f"Zarr store {self._store} is not empty.")
        self._owns_target = True
        self._state = "opening"

        level = self._config.compression_level
        specs: list[ArraySpec] = []
        coords: list[tuple[ArraySpec, int]] = []
        groups = self._groups()
        coord_dtype = np.dtype(np.int64)
        coord_codecs = compressors_for(codec_for(self._config, coord_dtype), level, coord_dtype)
        for group in groups:
            for dim, size in self._dims_of(group).items():
                spec = ArraySpec(
                    group,
                    dim,
                    (size,),
                    (min(size, self._config.coord_chunk),),
                    coord_dtype,
                    (dim,),
                    coord_codecs,
                    POSITION_ATTRS,
                )
                coords.append((spec, size))
        self._encoders = {}
        for (group, name), layout in self._layouts.items():
            dtype = np.dtype(layout.dtype)
            spec = ArraySpec(
                group,
                name,
                layout.full_shape,
                self._chunks(layout),
                dtype,
                layout.dims,
                compressors_for(codec_for(self._config, dtype), level, dtype),
                {},
            )
            specs.append(spec)
            self._encoders[(group, name)] = chunk_encoder(spec.compressors)
        # Every group and array is created in one trip to Zarr's event loop.
        # Dimension coordinates are declared only; their values are written
        # chunk by chunk with the static variables, in memory that does not
        # grow with rows.
        made = run_to_end(
            create_nodes(self._store, root_attrs, groups, [*specs, *(c for c, _ in coords)])
        )
        arrays = [zarr.Array(a) for a in made]
        for spec, array in zip(specs, arrays, strict=False):
            self._arrays[(spec.group, spec.name)] = array
        self._pending_coords = [
            (array, size) for (_, size), array in zip(coords, arrays[len(specs) :], strict=True)
        ]
        self._state = "open"
        if self._pending_static or self._pending_coords:
            self._static_thread = threading.Thread(
                target=self._write_static, name="dopax-static-writer", daemon=True
            )
            self._static_thread.start()
        logger.debug("Opened Zarr sink %s with %d variables", self._store, len(self._layouts))

    def _write_static(self) -> None:
        try:
            for array, size in self._pending_coords:
                step = self._config.coord_chunk
                for start in range(0, size, step):
                    if self._state != "open":
                        return
                    stop = min(size, start + step)
                    array[start:stop] = np.arange(start, stop, dtype=np.int64)
            for layout, value in self._pending_static:
                # chunk by chunk: a stored posterior (a trace's) is never read whole
                for where, chain, draws in draw_chunks(layout):
                    if self._state != "open":
                        return
                    piece = read_stored(value, chain, draws)
                    self.write(layout.group, layout.name, (where,), piece)
        except BaseException as err:  # reported by close()
            self._static_error = err

    def _join_static(self) -> None:
        thread = self._static_thread
        if thread is not None:
            thread.join()
            self._static_thread = None
        self._pending_static = []
        self._pending_coords = []

    @staticmethod
    def _chunks(layout: SiteLayout) -> tuple[int, ...]:
        return tuple(
            max(1, min(c, n)) for c, n in zip(layout.chunks, layout.full_shape, strict=True)
        )

    def write(self, group: str, name: str, index: tuple[slice, ...], block: np.ndarray) -> None:
        """Write one block's chunks (:meth:`Sink.write`; thread-safe for disjoint blocks)."""
        layout, array, resolved = self._prepare(group, name, index, block)
        target = self._arrays[(layout.group, layout.name)]
        chunks = self._chunks(layout)
        for region, rows in pieces(layout, resolved):
            piece = array[rows]
            if piece.size == 0:
                continue
            if self._write_whole_chunk(layout, target, region, piece, chunks):
                continue
            partial = partial_chunks(region, layout.full_shape, chunks)
            stripes = sorted({hash((group, name, chunk)) % len(self._stripes) for chunk in partial})
            with contextlib.ExitStack() as held:
                for stripe in stripes:
                    held.enter_context(self._stripes[stripe])
                target[region] = piece

    def _write_whole_chunk(
        self,
        layout: SiteLayout,
        target: zarr.Array[Any],
        region: tuple[int | slice, ...],
        piece: np.ndarray,
        chunks: tuple[int, ...],
    ) -> bool:
        """Encode and write a block that is exactly one chunk straight to its file.

        The bytes are those Zarr itself would store (the array's codecs applied
        to the chunk in C order, edge chunks padded to the full chunk shape);
        encoding runs in the calling writer thread without Zarr's event loop,
        which is faster with several writers (they do not queue on the loop).
        Returns ``False`` (nothing written) for any other block or store.
        """
        encoder = self._encoders.get((layout.group, layout.name))
        if self._path is None or encoder is None:
            return False
        assert self._guard is not None
        return write_whole_chunk(
            self._path / layout.group / layout.name,
            layout,
            target,
            region,
            piece,
            chunks,
            encoder,
            self._files,
            self._guard,
        )

    def close(self) -> xr.DataTree:
        """Wait for the static variables, consolidate metadata, mark the store complete.

        Returns the result opened lazily. If any step fails or is interrupted,
        what was written is removed before the error propagates.

        Raises:
            BaseException: The error that stopped the result from being
                finished (e.g. the error that stopped the writing of the static
                variables, or a full disk).
        """
        self._check_open()
        assert self._store is not None
        try:
            self._join_static()
            if self._static_error is not None:
                raise self._static_error
            if self._guard is not None:
                self._guard.check()
            finish_store(self._store, COMPLETE_ATTR, self._late_attrs)
            if self._guard is not None:
                self._guard.check()
        except BaseException:
            self.abort()
            raise
        self._arrays = {}
        self._state = "closed"
        logger.debug("Closed Zarr sink %s", self._store)
        try:
            return open_result(
                self._path if self._path is not None else self._store, keepalive=self._keepalive
            )
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Remove a finished result (its call failed after the result was complete)."""
        if self._state == "closed":
            self._state = "aborted"
            self._remove()

    def abort(self) -> None:
        """Remove what was written: the folder (or its contents), or the store's keys.

        Never raises (a failed removal is retried later); a closed result stays (:meth:`discard`).
        """
        if self._state == "closed":
            logger.debug("abort() after close() leaves the complete result in place.")
            return
        self._state = "aborted"
        self._join_static()
        self._arrays = {}
        self._remove()

    def _remove(self) -> None:
        if not self._owns_target:
            return
        try:
            remove_written(self._path, self._created_folder, self._store)
        except Exception as err:  # the store does not answer: try again later, and say so
            where = str(self._path) if self._path is not None else self._label
            args = (self._path, self._created_folder, self._store)
            removal_failed(where or str(self._store), remove_written, args, err, bool(where))
