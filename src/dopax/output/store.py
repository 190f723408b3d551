"""Strict reading of persisted results and :func:`open_result`.

A result store is complete only when its root ``zarr.json`` carries the
attribute :data:`COMPLETE_ATTR` set to ``True``. Sinks write that attribute
last, after every chunk and the consolidated metadata, so a store that lacks it
was never finished (the call failed or is still running).

Reads go through :class:`StrictStore`, which turns a missing chunk into
:class:`~dopax.exceptions.IncompleteResultError` instead of letting Zarr fill
the gap with its fill value. Sinks write every chunk (``write_empty_chunks``),
so a missing chunk always means missing data. Every chunk ends with a CRC-32C
checksum (Zarr's ``crc32c`` codec); the store checks it as the chunk is read
and names the chunk's file when it does not match. Results written before
checksums were added have none and are read unchecked.

Results are read lazily through dask, and xarray imports ``dask.array`` at the
first variable it makes: importing it with this module keeps that import
out of a first call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
from collections.abc import AsyncGenerator, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import dask.array  # noqa: F401
import google_crc32c
import numpy as np
import xarray as xr
import zarr
import zarr.errors
from zarr.abc.store import Store
from zarr.storage import LocalStore, WrapperStore

from dopax.exceptions import IncompleteResultError
from dopax.output.location import location
from dopax.output.schema import CHUNKED_GROUPS, POSITION_ATTRS, position_coords

if TYPE_CHECKING:
    from zarr.abc.store import ByteRequest
    from zarr.core.buffer import Buffer, BufferPrototype

__all__ = ["COMPLETE_ATTR", "StrictStore", "is_complete", "open_result"]

logger = logging.getLogger("dopax")

#: Root attribute that marks a finished result; written last by the sinks.
COMPLETE_ATTR = "dopax_complete"

#: File names of Zarr metadata documents (v3 and v2); every other key is data.
_METADATA_NAMES = frozenset({"zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata"})


def _is_metadata_key(key: str) -> bool:
    return key.rsplit("/", 1)[-1] in _METADATA_NAMES


def array_of_chunk(key: str) -> str | None:
    """Return the path of the array a chunk key belongs to (``a/b/c/0/1`` -> ``a/b``).

    Keys of Zarr v3's default chunk key encoding only (``c`` then the chunk's
    indices); ``None`` for any other key.
    """
    parts = key.split("/")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "c" and all(p.isdigit() for p in parts[i + 1 :]):
            return "/".join(parts[:i])
        if not parts[i].isdigit():
            return None
    return None


def checksum_matches(data: np.ndarray) -> bool:
    """Whether the last four bytes of ``data`` are the CRC-32C of the bytes before them."""
    if data.size < 4:
        return False
    body = np.ascontiguousarray(data[:-4])
    return struct.pack("<I", google_crc32c.value(body)) == bytes(data[-4:])


class StrictStore(WrapperStore[Store]):
    """A Zarr store wrapper whose reads of missing or damaged chunks raise.

    Metadata keys may be missing (Zarr probes for them); a missing data key
    raises :class:`~dopax.exceptions.IncompleteResultError`, and so does a
    chunk of an array whose codecs end with ``crc32c`` whose checksum does not
    match its bytes (or whose array's own ``zarr.json`` is gone). The wrapper
    also holds a reference to ``keepalive`` so that whatever reads through it
    (lazy arrays, a DataTree) keeps that object alive. Subclasses raise their
    own errors (:meth:`_missing`, :meth:`_corrupt`).

    Args:
        store: The store to read from.
        label: How to name the store in error messages (a folder path);
            defaults to ``str(store)``.
        keepalive: Any object to keep referenced while this store is in use.
    """

    def __init__(
        self, store: Store, *, label: str | None = None, keepalive: object | None = None
    ) -> None:
        super().__init__(store)
        self.label = label if label is not None else str(store)
        self.keepalive = keepalive
        self._checked: dict[str, bool] = {}  # array path -> its chunks carry a checksum

    def _with_store(self, store: Store) -> StrictStore:
        return type(self)(store, label=self.label, keepalive=self.keepalive)

    def with_read_only(self, read_only: bool = False) -> StrictStore:
        """Return this wrapper around a copy of the store with ``read_only`` set."""
        # (zarr before 3.1.6 does not forward this through wrapper stores)
        return self._with_store(self._store.with_read_only(read_only))

    def __repr__(self) -> str:
        return f"StrictStore({self.label!r})"

    def _missing(self, key: str) -> Exception:
        inner = self._store
        if isinstance(inner, LocalStore) and not inner.root.exists():
            return IncompleteResultError(
                f"The result folder {self.label} no longer exists (it was deleted), so "
                f"{key!r} cannot be read. Lazy results read from their folder on demand; "
                "keep the folder, or load the data into memory before removing it."
            )
        return IncompleteResultError(
            f"Chunk {key!r} is missing from the result at {self.label}: the result is "
            "incomplete or has been modified since it was written. Compute it again."
        )

    def _corrupt(self, key: str) -> Exception:
        """The error for a chunk whose bytes do not match their checksum."""
        return IncompleteResultError(
            f"Chunk {key!r} of the result at {self.label} does not match its checksum: the "
            "file was modified or damaged after the result was written. Compute the result "
            "again (or restore the folder from a copy)."
        )

    async def _has_checksum(self, array: str, prototype: BufferPrototype) -> bool:
        """Whether the chunks of ``array`` end with a checksum (read from its ``zarr.json``)."""
        known = self._checked.get(array)
        if known is not None:
            return known
        meta_key = f"{array}/zarr.json" if array else "zarr.json"
        raw = await self._store.get(meta_key, prototype)
        if raw is None:
            raise self._missing(meta_key)
        try:
            codecs = json.loads(raw.to_bytes()).get("codecs") or []
            last = codecs[-1]
            name = last.get("name") if isinstance(last, dict) else last
        except (ValueError, AttributeError, IndexError, TypeError):
            name = None
        self._checked[array] = found = name == "crc32c"
        return found

    async def _verified(self, key: str, value: Buffer, prototype: BufferPrototype) -> Buffer:
        if _is_metadata_key(key):
            return value
        array = array_of_chunk(key)
        if array is None or not await self._has_checksum(array, prototype):
            return value
        if not checksum_matches(value.as_numpy_array().view(np.uint8).reshape(-1)):
            raise self._corrupt(key)
        return value

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        """Return the value of ``key``; raise if it is a missing or damaged data key.

        Args:
            key: The store key.
            prototype: Buffer prototype for the returned value.
            byte_range: Optional part of the value to read.

        Raises:
            IncompleteResultError: If ``key`` names a chunk that is not in the store
                or whose checksum does not match.
        """
        value = await self._store.get(key, prototype, byte_range)
        if value is None:
            if not _is_metadata_key(key):
                raise self._missing(key)
            return value
        if byte_range is None:
            return await self._verified(key, value, prototype)
        return value

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        """Return several (partial) values; raise if a data key is missing.

        Args:
            prototype: Buffer prototype for the returned values.
            key_ranges: Pairs of key and optional byte range.

        Raises:
            IncompleteResultError: If a requested chunk is not in the store.
        """
        key_ranges = list(key_ranges)
        values = await self._store.get_partial_values(prototype, key_ranges)
        out: list[Buffer | None] = []
        for (key, byte_range), value in zip(key_ranges, values, strict=True):
            if value is None and not _is_metadata_key(key):
                raise self._missing(key)
            if value is not None and byte_range is None:
                value = await self._verified(key, value, prototype)
            out.append(value)
        return out

    async def _get_many(
        self, requests: Iterable[tuple[str, BufferPrototype, ByteRequest | None]]
    ) -> AsyncGenerator[tuple[str, Buffer | None], None]:
        for key, prototype, byte_range in requests:
            yield key, await self.get(key, prototype, byte_range)


def _as_store(
    path_or_store: str | os.PathLike[str] | Store,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[Store, str]:
    if isinstance(path_or_store, StrictStore):
        return path_or_store._store, path_or_store.label
    where = location(path_or_store, storage_options, name="path_or_store")
    if where.path is not None and not where.path.is_dir():
        raise IncompleteResultError(
            f"No result at {where.path}: the folder does not exist (it was never written, "
            "the call that wrote it did not complete, or it was deleted)."
        )
    store = where.open_store(read_only=True)
    if not store.read_only:
        with contextlib.suppress(NotImplementedError):
            store = store.with_read_only(True)
    return store, where.label


def is_complete(
    path_or_store: str | os.PathLike[str] | Store,
    storage_options: Mapping[str, Any] | None = None,
) -> bool:
    """Return whether a result store carries the completion marker.

    Args:
        path_or_store: A result folder, URL or Zarr store.
        storage_options: fsspec options for a URL.
    """
    try:
        store, _ = _as_store(path_or_store, storage_options)
        group = zarr.open_group(store, mode="r", zarr_format=3)
        return group.attrs.get(COMPLETE_ATTR) is True
    except (OSError, KeyError, IncompleteResultError, zarr.errors.BaseZarrError):
        return False


def _stored_chunks(ds: xr.Dataset) -> dict[str, int]:
    """Return each dimension's chunk length as the variables of ``ds`` are stored."""
    chunks: dict[str, int] = {}
    for var in ds.data_vars.values():
        stored = var.encoding.get("chunks")
        if stored is None:
            continue
        for dim, size in zip(var.dims, stored, strict=True):
            chunks.setdefault(str(dim), int(size))
    return chunks


def _with_indexes(tree: xr.DataTree) -> xr.DataTree:
    """Index every dimension coordinate of ``tree`` and chunk the draws users reduce.

    A coordinate marked with :data:`~dopax.output.schema.POSITION_ATTRS`
    (positions ``0 .. n - 1``) gets a :class:`pandas.RangeIndex`, in constant
    memory, and is not read; any other dimension coordinate is loaded into a
    default index, as ``xarray.open_datatree`` would. The groups of
    :data:`~dopax.output.schema.CHUNKED_GROUPS` become Dask arrays chunked as
    stored; the others stay lazily read arrays (see that constant for why).
    """
    nodes: dict[str, xr.Dataset] = {}
    for path, node in tree.subtree_with_keys:
        ds = node.to_dataset(inherit=False)
        positions = {
            str(name): ds.sizes[name]
            for name, var in ds.coords.items()
            if name in ds.dims
            and var.ndim == 1
            and all(var.attrs.get(k) == v for k, v in POSITION_ATTRS.items())
        }
        others = [str(name) for name in ds.coords if name in ds.dims and str(name) not in positions]
        if positions:
            ds = ds.drop_vars(list(positions)).assign_coords(position_coords(positions))
        for name in others:
            ds = ds.set_xindex(name)
        if path in CHUNKED_GROUPS and ds.data_vars:
            ds = ds.chunk(_stored_chunks(ds))
        nodes["/" if path == "." else f"/{path}"] = ds
    return xr.DataTree.from_dict(nodes)


def open_result(
    path_or_store: str | os.PathLike[str] | Store,
    *,
    storage_options: Mapping[str, Any] | None = None,
    keepalive: object | None = None,
) -> xr.DataTree:
    """Open a completed result lazily as a :class:`xarray.DataTree`.

    Nothing is read until a value is asked for. The draws of the predictive
    groups are Dask arrays chunked as stored; the groups ArviZ's statistics
    read whole (``posterior``, ``log_likelihood``, ``observed_data``) are
    lazily read arrays that ArviZ accepts. Every read goes through a
    store wrapper that checks each chunk is there, so a chunk that disappears later (or a deleted
    folder) raises :class:`~dopax.exceptions.IncompleteResultError` when read
    rather than yielding fill values.

    Args:
        path_or_store: A result folder, an fsspec URL (``s3://``, ``gs://``,
            ``az://``, ``memory://``, ``file://``) or a Zarr store written by a
            dopax sink.
        storage_options: fsspec options for a URL (credentials, endpoint).
        keepalive: An object the returned tree keeps referenced as long as the
            tree or any of its lazy arrays lives (for example the owner of a
            temporary folder whose finaliser deletes the folder).

    Returns:
        The result tree; the completion marker is not repeated in its attributes.

    Raises:
        IncompleteResultError: If the store does not exist or the call that
            wrote it did not complete.
        TypeError: If ``path_or_store`` is neither a path, a URL nor a Zarr store.
        ValueError: For a URL with an unknown scheme.
    """
    store, label = _as_store(path_or_store, storage_options)
    if not is_complete(store):
        raise IncompleteResultError(
            f"The result at {label} is incomplete: the call that wrote it did not "
            "complete (it failed, was interrupted, or is still running)."
        )
    strict = StrictStore(store, label=label, keepalive=keepalive)
    # xarray's annotations omit zarr stores, which its zarr backend accepts.
    # Default indexes would load every dimension coordinate into memory (80 MB
    # for ten million rows); indexes are set below instead.
    tree = xr.open_datatree(
        strict,  # type: ignore[arg-type]
        engine="zarr",
        consolidated=True,
        chunks=None,
        cache=False,
        create_default_indexes=False,
    )
    tree = _with_indexes(tree)
    tree.attrs.pop(COMPLETE_ATTR, None)
    logger.debug("Opened result at %s", label)
    return tree
