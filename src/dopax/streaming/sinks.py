"""Sinks: destinations for streamed predictive draws.

A sink receives blocks of draws addressed in the *flat* layout
``(S, *shape)``, where ``S = num_chains * num_draws`` runs chain-major (flat
draw ``s`` is chain ``s // num_draws``, draw ``s % num_draws``), and stores
them in the result layout ``(chain, draw, *shape)`` of
:mod:`dopax.output.schema`. Every sink follows the same life cycle:
:meth:`Sink.open`, any number of (thread-safe) :meth:`Sink.write` calls,
then either :meth:`Sink.close`, which returns the result as an
:class:`xarray.DataTree`, or :meth:`Sink.abort` on failure.

Zarr stores written here are Zarr format 3 with consolidated metadata. A
store is complete only once its root attribute
:data:`~dopax.output.store.COMPLETE_ATTR` is ``True``; :meth:`ZarrSink.close`
writes it after everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import shutil
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numcodecs
import numpy as np
import xarray as xr
import zarr
import zarr.codecs
import zarr.errors
from zarr.abc.codec import BytesBytesCodec
from zarr.abc.store import Store
from zarr.core.sync import sync
from zarr.storage import LocalStore

from dopax.config import ExecutionConfig, get_config
from dopax.exceptions import StreamingError
from dopax.output.schema import (
    GROUPS,
    POSITION_ATTRS,
    SiteLayout,
    position_coords,
    site_dims,
)
from dopax.output.store import COMPLETE_ATTR, open_result
from dopax.streaming.fileio import FileWriter

__all__ = ["MemorySink", "Sink", "StaticData", "ZarrSink"]

logger = logging.getLogger("dopax")

#: Small variables written whole at open: ``{group: {name: array}}``, each array
#: shaped ``(chain, draw, *shape)``.
StaticData = Mapping[str, Mapping[str, np.ndarray]]

_NUM_LOCK_STRIPES = 64


@runtime_checkable
class Sink(Protocol):
    """Destination of streamed draws.

    ``write`` may be called from several threads at once; ``open``, ``close``
    and ``abort`` are called from one thread, with no ``write`` in flight.
    """

    def open(
        self,
        layouts: Sequence[SiteLayout],
        *,
        static: StaticData | None = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        """Declare the streamed variables and write the static groups and root attributes.

        Args:
            layouts: One layout per streamed variable.
            static: Small variables written whole, ``{group: {name: array}}``;
                each array already has chain and draw axes.
            attrs: Root attributes of the result.
        """
        ...

    def write(self, group: str, name: str, index: tuple[slice, ...], block: np.ndarray) -> None:
        """Store one block of draws.

        Args:
            group: The variable's group.
            name: The variable's name.
            index: Slices into the flat layout ``(S, *shape)``; trailing
                dimensions left out are taken whole.
            block: The values, shaped like ``index`` selects.
        """
        ...

    def close(self) -> xr.DataTree:
        """Finalise the result and return it."""
        ...

    def abort(self) -> None:
        """Discard the result so that nothing reads as complete."""
        ...


#: Largest chunk of a static variable (bytes); chunks split the draws.
_STATIC_CHUNK_BYTES = 64 * 2**20


#: Elements per chunk of a stored dimension coordinate (8 MiB of int64).
COORD_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class _ArraySpec:
    """One Zarr array of a result, as ``ZarrSink.open`` declares it."""

    group: str
    name: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype[Any]
    dims: tuple[str, ...]
    compressors: tuple[BytesBytesCodec, ...]
    attributes: Mapping[str, Any]


def _attr_value(value: Any) -> Any:
    """A JSON-ready attribute value (NumPy arrays and scalars become Python ones)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _fill_value(dtype: np.dtype[Any]) -> dict[str, Any]:
    """``fill_value`` as xarray sets it: NaN for floating point, Zarr's default otherwise."""
    return {"fill_value": np.nan} if dtype.kind == "f" else {}


async def _create_nodes(
    store: Store,
    root_attrs: Mapping[str, Any],
    groups: Sequence[str],
    arrays: Sequence[_ArraySpec],
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
        attributes={k: _attr_value(v) for k, v in root_attrs.items()},
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
                    **_fill_value(spec.dtype),
                )
                for spec in arrays
            )
        )
    )


def _static_layout(group: str, name: str, array: np.ndarray) -> SiteLayout:
    """Return the layout of a static variable: whole draws per chunk, chunks of at most 64 MB."""
    chains, draws = int(array.shape[0]), int(array.shape[1])
    rest = tuple(int(n) for n in array.shape[2:])
    per_draw = max(int(np.prod(rest, dtype=np.int64)) * array.dtype.itemsize, 1)
    draw_chunk = max(1, min(draws, _STATIC_CHUNK_BYTES // per_draw))
    return SiteLayout(group, name, chains, draws, rest, array.dtype.str, (1, draw_chunk, *rest))


#: Blosc shuffle filter of each Blosc-based codec name.
_BLOSC_SHUFFLE = {
    "lz4": zarr.codecs.BloscShuffle.shuffle,
    "blosc-lz4": zarr.codecs.BloscShuffle.shuffle,
    "bitshuffle-lz4": zarr.codecs.BloscShuffle.bitshuffle,
}


def codec_for(config: ExecutionConfig, dtype: Any) -> str | None:
    """Return the codec a variable of ``dtype`` is stored with under ``config``.

    ``"auto"`` stores floating-point variables uncompressed and compresses the
    others (integers, booleans) with LZ4 after a bit shuffle (Blosc): sampled
    floats carry close to 32 bits of entropy per value and shrink by about 8%
    at a cost of a quarter of the call's time, while counts and indicators
    have few significant bits, which the bit shuffle gathers into long runs.
    For Bernoulli and Poisson draws that is about 8 times faster than zstd
    and stores fewer bytes (``python benchmarks/micro.py codec``).
    """
    if config.compressor == "auto":
        return None if np.dtype(dtype).kind in "fc" else "bitshuffle-lz4"
    return config.compressor


def _compressors(codec: str | None, level: int, dtype: Any) -> tuple[BytesBytesCodec, ...]:
    """Return the Zarr codecs for ``codec`` on variables of ``dtype``."""
    if codec is None:
        return ()
    if codec == "zstd":
        return (zarr.codecs.ZstdCodec(level=level),)
    if codec in _BLOSC_SHUFFLE:
        return (
            zarr.codecs.BloscCodec(
                typesize=np.dtype(dtype).itemsize,
                cname="lz4",
                clevel=min(max(level, 0), 9),
                shuffle=_BLOSC_SHUFFLE[codec],
            ),
        )
    raise ValueError(f"Unknown compressor {codec!r}.")  # pragma: no cover


def _chunk_encoder(compressors: Sequence[BytesBytesCodec]) -> Callable[[np.ndarray], Any]:
    """Return a function giving the stored bytes of a chunk under ``compressors``.

    The encoder is built from the Zarr codec's own settings, so the bytes are
    those Zarr itself stores (asserted in the tests).
    """
    if not compressors:
        return lambda chunk: chunk
    (codec,) = compressors
    if isinstance(codec, zarr.codecs.ZstdCodec):
        zstd = numcodecs.Zstd(level=codec.level)
        return lambda chunk: zstd.encode(chunk)
    if isinstance(codec, zarr.codecs.BloscCodec):
        shuffle = {
            zarr.codecs.BloscShuffle.noshuffle: numcodecs.Blosc.NOSHUFFLE,
            zarr.codecs.BloscShuffle.shuffle: numcodecs.Blosc.SHUFFLE,
            zarr.codecs.BloscShuffle.bitshuffle: numcodecs.Blosc.BITSHUFFLE,
        }[codec.shuffle]
        blosc = numcodecs.Blosc(
            cname=codec.cname.value,
            clevel=codec.clevel,
            shuffle=shuffle,
            blocksize=codec.blocksize,
            typesize=codec.typesize,
        )
        return lambda chunk: blosc.encode(chunk)
    raise ValueError(f"No chunk encoder for {codec!r}.")  # pragma: no cover


def _resolve_index(
    layout: SiteLayout, index: tuple[slice, ...], block_shape: tuple[int, ...]
) -> list[slice]:
    """Return ``index`` as unit-step slices over ``(S, *shape)``, checked against the block."""
    flat_shape = (layout.num_chains * layout.num_draws, *layout.shape)
    if not isinstance(index, tuple) or not 1 <= len(index) <= len(flat_shape):
        raise ValueError(
            f"`index` for {layout.group}/{layout.name} must be a tuple of 1 to "
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


def _pieces(
    layout: SiteLayout, resolved: Sequence[slice]
) -> Iterator[tuple[tuple[int | slice, ...], slice]]:
    """Split a flat region at chain boundaries.

    Yields ``(region, rows)``: ``region`` indexes the ``(chain, draw, *shape)``
    array and ``rows`` selects the matching leading part of the block.
    """
    flat, rest = resolved[0], tuple(resolved[1:])
    s, offset = flat.start, 0
    while s < flat.stop:
        chain, d0 = divmod(s, layout.num_draws)
        n = min(layout.num_draws - d0, flat.stop - s)
        yield (chain, slice(d0, d0 + n), *rest), slice(offset, offset + n)
        s += n
        offset += n


def _partial_chunks(
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


class _LayoutSink:
    """Shared bookkeeping of the sinks: declared variables, state, index mapping."""

    def __init__(self) -> None:
        self._layouts: dict[tuple[str, str], SiteLayout] = {}
        self._static: dict[str, dict[str, np.ndarray]] = {}
        self._attrs: dict[str, Any] = {}
        self._state = "new"

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
            if len(layout.chunks) != len(layout.full_shape) or min(layout.chunks) < 1:
                raise ValueError(
                    f"{layout.group}/{layout.name}: `chunks` {layout.chunks} must give a positive "
                    f"size for each of the {len(layout.full_shape)} dimensions."
                )
            np.dtype(layout.dtype)
            declared[key] = layout
        static_arrays: dict[str, dict[str, np.ndarray]] = {}
        for group, variables in (static or {}).items():
            self._check_group(group)
            for name, value in variables.items():
                array = np.asarray(value)
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
        nodes: dict[str, xr.Dataset] = {"/": xr.Dataset(attrs=dict(root_attrs))}
        for group in self._groups():
            data_vars: dict[str, tuple[tuple[str, ...], Any]] = {}
            for (g, name), layout in self._layouts.items():
                if g == group:
                    data_vars[name] = (layout.dims, make_data(layout))
            for name, array in self._static.get(group, {}).items():
                data_vars[name] = (site_dims(name, array.ndim - 2), array)
            coords = position_coords(self._dims_of(group))
            nodes[f"/{group}"] = xr.Dataset(data_vars, coords=coords)
        return xr.DataTree.from_dict(nodes)

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
        return layout, array, _resolve_index(layout, index, array.shape)


class MemorySink(_LayoutSink):
    """Sink into preallocated NumPy arrays; :meth:`close` returns an in-memory DataTree."""

    def __init__(self) -> None:
        super().__init__()
        self._arrays: dict[tuple[str, str], np.ndarray] = {}

    def open(
        self,
        layouts: Sequence[SiteLayout],
        *,
        static: StaticData | None = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        """Allocate one array per streamed variable.

        Args:
            layouts: One layout per streamed variable.
            static: Small variables stored whole, ``{group: {name: array}}``;
                each array already has chain and draw axes.
            attrs: Root attributes of the result.
        """
        self._declare(layouts, static, attrs)
        self._arrays = {
            key: np.zeros(layout.full_shape, dtype=layout.dtype)
            for key, layout in self._layouts.items()
        }
        self._state = "open"

    def write(self, group: str, name: str, index: tuple[slice, ...], block: np.ndarray) -> None:
        """Copy one block into its variable (thread-safe for disjoint blocks).

        Args:
            group: The variable's group.
            name: The variable's name.
            index: Slices into the flat layout ``(S, *shape)``.
            block: The values, shaped like ``index`` selects.
        """
        layout, array, resolved = self._prepare(group, name, index, block)
        target = self._arrays[(layout.group, layout.name)]
        for region, rows in _pieces(layout, resolved):
            target[region] = array[rows]

    def close(self) -> xr.DataTree:
        """Return the result as a DataTree of NumPy arrays."""
        self._check_open()
        arrays = self._arrays
        tree = self._tree(lambda layout: arrays[(layout.group, layout.name)], self._attrs)
        self._arrays = {}
        self._state = "closed"
        return tree

    def abort(self) -> None:
        """Drop the arrays; the sink can no longer be written or closed."""
        self._arrays = {}
        if self._state != "closed":
            self._state = "aborted"


class ZarrSink(_LayoutSink):
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
        config: Execution settings (codec and level); defaults to the settings
            in force when the sink is created.
        keepalive: An object the tree returned by :meth:`close` keeps
            referenced (see :func:`~dopax.output.store.open_result`).

    Raises:
        TypeError: If not exactly one of ``path`` and ``store`` is given.
        FileExistsError: If ``path`` exists and is not an empty folder.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        store: Store | None = None,
        config: ExecutionConfig | None = None,
        keepalive: object | None = None,
    ) -> None:
        super().__init__()
        if (path is None) == (store is None):
            raise TypeError("Pass exactly one of `path` and `store`.")
        self._config = config if config is not None else get_config()
        self._keepalive = keepalive
        self._path = Path(path).expanduser().resolve() if path is not None else None
        self._store: Store | None = store
        if self._path is not None:
            self._check_new_folder(self._path)
        self._created_folder = False
        self._owns_target = False
        self._arrays: dict[tuple[str, str], zarr.Array[Any]] = {}
        self._stripes = [threading.Lock() for _ in range(_NUM_LOCK_STRIPES)]
        self._encoders: dict[tuple[str, str], Callable[[np.ndarray], Any]] = {}
        self._pending_static: list[tuple[SiteLayout, np.ndarray]] = []
        self._pending_coords: list[tuple[zarr.Array[Any], int]] = []
        self._static_thread: threading.Thread | None = None
        self._static_error: BaseException | None = None
        self._files = FileWriter(direct=self._config.direct_io)

    @staticmethod
    def _check_new_folder(path: Path) -> None:
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise FileExistsError(
                f"{path} already exists and is not an empty folder; results are written to "
                "a new folder only."
            )

    def open(
        self,
        layouts: Sequence[SiteLayout],
        *,
        static: StaticData | None = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        """Create the store: metadata, coordinates, static groups and root attributes.

        Args:
            layouts: One layout per streamed variable.
            static: Small variables written whole, ``{group: {name: array}}``;
                each array already has chain and draw axes.
            attrs: Root attributes of the result.

        Raises:
            FileExistsError: If the folder or store is no longer empty.
        """
        self._declare(layouts, static, attrs)
        # Static variables (the posterior, often the largest of them) are
        # declared like streamed ones and written by a background thread while
        # the draws are computed; close() waits for it.
        self._pending_static = []
        for group, variables in self._static.items():
            for name, value in variables.items():
                static_layout = _static_layout(group, name, value)
                self._layouts[(group, name)] = static_layout
                flat = value.reshape(-1, *static_layout.shape)
                self._pending_static.append((static_layout, flat))
        self._static = {}
        root_attrs = dict(self._attrs)
        if self._path is not None:
            self._check_new_folder(self._path)
            self._created_folder = not self._path.exists()
            self._path.mkdir(parents=True, exist_ok=True)
            self._store = LocalStore(self._path)
            root_attrs["artifact_path"] = str(self._path)
        assert self._store is not None
        if not sync(self._store.is_empty("")):
            raise FileExistsError(f"Zarr store {self._store} is not empty.")
        self._owns_target = True
        self._state = "opening"

        level = self._config.compression_level
        specs: list[_ArraySpec] = []
        coords: list[tuple[_ArraySpec, int]] = []
        groups = self._groups()
        coord_dtype = np.dtype(np.int64)
        coord_codecs = _compressors(codec_for(self._config, coord_dtype), level, coord_dtype)
        for group in groups:
            for dim, size in self._dims_of(group).items():
                spec = _ArraySpec(
                    group,
                    dim,
                    (size,),
                    (min(size, COORD_CHUNK),),
                    coord_dtype,
                    (dim,),
                    coord_codecs,
                    POSITION_ATTRS,
                )
                coords.append((spec, size))
        self._encoders = {}
        for (group, name), layout in self._layouts.items():
            dtype = np.dtype(layout.dtype)
            spec = _ArraySpec(
                group,
                name,
                layout.full_shape,
                self._chunks(layout),
                dtype,
                layout.dims,
                _compressors(codec_for(self._config, dtype), level, dtype),
                {},
            )
            specs.append(spec)
            self._encoders[(group, name)] = _chunk_encoder(spec.compressors)
        # Every group and array is created in one trip to Zarr's event loop.
        # Dimension coordinates are declared only; their values are written
        # chunk by chunk with the static variables, in memory that does not
        # grow with rows.
        made = sync(
            _create_nodes(self._store, root_attrs, groups, [*specs, *(c for c, _ in coords)])
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
                for start in range(0, size, COORD_CHUNK):
                    if self._state != "open":
                        return
                    stop = min(size, start + COORD_CHUNK)
                    array[start:stop] = np.arange(start, stop, dtype=np.int64)
            for layout, flat in self._pending_static:
                if self._state != "open":
                    return
                self.write(layout.group, layout.name, (slice(0, flat.shape[0]),), flat)
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
        """Write one block (thread-safe for disjoint blocks).

        Args:
            group: The variable's group.
            name: The variable's name.
            index: Slices into the flat layout ``(S, *shape)``.
            block: The values, shaped like ``index`` selects.
        """
        layout, array, resolved = self._prepare(group, name, index, block)
        target = self._arrays[(layout.group, layout.name)]
        chunks = self._chunks(layout)
        for region, rows in _pieces(layout, resolved):
            piece = array[rows]
            if piece.size == 0:
                continue
            if self._write_whole_chunk(layout, target, region, piece, chunks):
                continue
            partial = _partial_chunks(region, layout.full_shape, chunks)
            stripes = sorted({hash((group, name, chunk)) % _NUM_LOCK_STRIPES for chunk in partial})
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
        which is about twice as fast with several writers (``BENCHMARKS.md``).
        Returns ``False`` (nothing written) for any other block or store.
        """
        encoder = self._encoders.get((layout.group, layout.name))
        if self._path is None or encoder is None:
            return False
        full = layout.full_shape
        if len(region) != len(full):
            return False
        coords = []
        extent = []
        for sl, c, n in zip(region, chunks, full, strict=True):
            if isinstance(sl, int | np.integer):
                start, stop = int(sl), int(sl) + 1
            else:
                start, stop = sl.start or 0, n if sl.stop is None else sl.stop
            if start % c or not (stop - start == c or (stop == n and stop - start < c)):
                return False
            coords.append(start // c)
            extent.append(stop - start)
        if piece.size != int(np.prod(extent)):
            return False
        data = np.ascontiguousarray(
            piece.reshape(extent), dtype=np.dtype(layout.dtype).newbyteorder("<")
        )
        if data.shape != chunks:
            padded = np.zeros(chunks, dtype=data.dtype)
            padded[tuple(slice(0, k) for k in data.shape)] = data
            data = padded
        key = target.metadata.chunk_key_encoding.encode_chunk_key(tuple(coords))  # type: ignore[union-attr]
        encoded = encoder(data)
        path = self._path / layout.group / layout.name / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{threading.get_ident()}.partial")
        self._files.write(tmp, encoded)
        os.replace(tmp, path)
        return True

    def close(self) -> xr.DataTree:
        """Wait for the static variables, consolidate metadata, mark the store complete.

        Returns the result opened lazily.

        Raises:
            BaseException: The error that stopped the writing of the static
                variables (the partial result is removed first).
        """
        self._check_open()
        assert self._store is not None
        self._join_static()
        if self._static_error is not None:
            err = self._static_error
            self.abort()
            raise err
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore",
                message="Consolidated metadata is currently not part",
                category=zarr.errors.ZarrUserWarning,
            )
            zarr.consolidate_metadata(self._store, zarr_format=3)
        root = zarr.open_group(self._store, mode="r+", use_consolidated=True)
        root.attrs[COMPLETE_ATTR] = True
        self._arrays = {}
        self._state = "closed"
        logger.debug("Closed Zarr sink %s", self._store)
        return open_result(
            self._path if self._path is not None else self._store, keepalive=self._keepalive
        )

    def abort(self) -> None:
        """Remove what was written: the folder (or its contents), or the store's keys.

        Never raises; a failure to clean up is logged. A closed (complete)
        result is left as it is.
        """
        if self._state == "closed":
            logger.debug("abort() after close() leaves the complete result in place.")
            return
        self._state = "aborted"
        self._join_static()
        self._arrays = {}
        if not self._owns_target:
            return
        try:
            if self._path is not None:
                if self._created_folder:
                    shutil.rmtree(self._path, ignore_errors=True)
                else:
                    for child in self._path.iterdir():
                        if child.is_dir() and not child.is_symlink():
                            shutil.rmtree(child, ignore_errors=True)
                        else:
                            child.unlink(missing_ok=True)
            elif self._store is not None:
                sync(self._store.clear())
        except Exception:
            logger.warning("Could not remove the partial result at %s.", self._store, exc_info=True)
