"""The arrays of a saved model (``state.zarr``): written with checksums, read back verified.

Each array is stored uncompressed, every chunk followed by its CRC-32C
(Zarr's ``crc32c`` codec), and the manifest records its shape, dtype and
chunk shape. Before anything is read or allocated, loading checks each
array's ``zarr.json`` against the manifest and that every chunk file is
present with exactly the size its shape gives; reading then checks every
checksum. Any difference raises :class:`~dopax.exceptions.SavedModelError`
naming the file. A model saved before checksums (format 1) has none of
this: its arrays are read as stored, with a warning.

Arrays only a resumed fit needs (an SVI optimizer's state, three times the
size of the parameters it moves) need not stay in memory: read with
``defer=``, they are read and checked once at load, remembered by a
BLAKE2b digest of their bytes, and read again when used (a
:class:`StoredArray`); bytes that differ from the digest then raise.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import zarr
import zarr.codecs

import dopax.persist.manifest as mf
from dopax._warn import warn
from dopax.exceptions import SavedModelError
from dopax.output.store import StrictStore
from dopax.persist.files import Folder
from dopax.streaming.sinks.codecs import CHECKSUM

__all__ = ["ModelStore", "StoredArray", "array_records", "read_arrays", "write_arrays"]

#: Largest chunk of a saved array.
CHUNK_BYTES = 64 * 2**20
#: Deferred arrays (``read_arrays(defer=...)``) smaller than this are read at load all the same.
DEFER_BYTES = 2**20
#: Dtypes a saved array may have.
DTYPES = frozenset(
    {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
    | {"float16", "float32", "float64"}
)
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_FIX = "Restore the folder from where it came from, or save the model again (`dopax.save_model`)."


class ModelStore(StrictStore):
    """Reads of ``state.zarr``: a missing chunk, or one whose checksum does not match, raises.

    The error is :class:`~dopax.exceptions.SavedModelError` naming the file.
    """

    def __repr__(self) -> str:
        return f"ModelStore({self.label!r})"

    def _missing(self, key: str) -> Exception:
        return SavedModelError(f"{self.label}/{key} is missing from the saved model. {_FIX}")

    def _corrupt(self, key: str) -> Exception:
        return SavedModelError(
            f"{self.label}/{key} does not match its checksum: the file was modified or "
            f"damaged after the model was saved. {_FIX}"
        )


def _digest_of(array: zarr.Array) -> str:
    """Read ``array`` one chunk (of whole rows) at a time, checked; return its digest.

    Chunks hold whole rows, so hashing them in order hashes the array's C-order
    bytes, as :meth:`StoredArray.read` does with the whole array.
    """
    digest = hashlib.blake2b(digest_size=32)
    step = array.chunks[0]
    for start in range(0, array.shape[0], step):
        part = np.ascontiguousarray(array[start : start + step])
        digest.update(part.data.cast("B"))
    return digest.hexdigest()


class StoredArray:
    """An array of a saved model's ``state.zarr`` that is read when it is used.

    It was read and checked once (every checksum) when the model was
    loaded, and its digest kept. :meth:`read` (and ``np.asarray``) reads it
    again and compares: a folder removed, replaced or changed since the
    load raises :class:`~dopax.exceptions.SavedModelError`. A copy or a
    pickle holds the values themselves.

    Args:
        store: The verifying store of ``state.zarr``.
        name: The array's path in it.
        shape: Its shape.
        dtype: Its dtype.
        digest: BLAKE2b digest (hex) of its C-order bytes at load.
    """

    def __init__(
        self, store: ModelStore, name: str, shape: tuple[int, ...], dtype: np.dtype, digest: str
    ) -> None:
        self.store, self.name, self.digest = store, name, digest
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)

    def __repr__(self) -> str:
        where = f"{self.store.label}/{self.name}"
        return f"StoredArray({where}, shape={self.shape}, dtype={self.dtype})"

    @property
    def ndim(self) -> int:
        """Number of axes."""
        return len(self.shape)

    def read(self) -> np.ndarray:
        """Return the array's values, read and checked against the digest taken at load.

        Raises:
            SavedModelError: If the folder no longer holds the bytes it held
                when the model was loaded.
        """
        label = f"{self.store.label}/{self.name}"
        try:
            array = zarr.open_array(self.store, path=self.name, mode="r", zarr_format=3)
            value = np.ascontiguousarray(array[...])
        except (FileNotFoundError, KeyError) as err:
            raise self._changed(label, "is gone") from err
        digest = hashlib.blake2b(value.data.cast("B"), digest_size=32).hexdigest()
        if value.shape != self.shape or value.dtype != self.dtype or digest != self.digest:
            raise self._changed(label, "has changed")
        return value

    @staticmethod
    def _changed(label: str, what: str) -> SavedModelError:
        return SavedModelError(
            f"{label} {what} since the model was loaded: a loaded model reads its "
            "optimizer state from its folder when a fit resumes, so the folder must stay as "
            "it was. Load the model again from the folder as it is now, or save the model "
            "(`dopax.save_model`) before changing the folder."
        )

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        value = self.read()
        return value if dtype is None else value.astype(dtype, copy=False)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (np.asarray, (self.read(),))


def _chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Whole rows per chunk, at most :data:`CHUNK_BYTES`."""
    if not shape:
        return ()
    per_row = max(math.prod(shape[1:]) * itemsize, 1)
    rows = max(1, min(shape[0], CHUNK_BYTES // per_row))
    return (rows, *(max(1, n) for n in shape[1:]))


def write_arrays(folder: Folder, arrays: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Write ``arrays`` to the folder's ``state.zarr``; return their manifest records.

    Args:
        folder: The saved model's folder.
        arrays: Name (``group/leaf``) to array.
    """
    store = folder.zarr_store(mf.STATE, read_only=False)
    root = zarr.open_group(store, mode="w", zarr_format=3)
    records: dict[str, dict[str, Any]] = {}
    for name, value in arrays.items():
        value = np.asarray(value, order="C")  # (a 0-d array stays 0-d)
        if value.dtype.name not in DTYPES:
            raise SavedModelError(
                f"The array {name!r} has dtype {value.dtype}, which is not saved."
            )
        group, _, leaf = name.rpartition("/")
        parent = root.require_group(group) if group else root
        chunks = _chunks(value.shape, value.dtype.itemsize)
        array = parent.create_array(
            leaf,
            shape=value.shape,
            chunks=chunks,
            dtype=value.dtype,
            compressors=(CHECKSUM,),
            config={"write_empty_chunks": True},
        )
        array[...] = value
        records[name] = {
            "shape": list(value.shape),
            "dtype": value.dtype.name,
            "chunks": list(chunks),
        }
    return records


def _ints(value: Any, positive: bool) -> bool:
    return isinstance(value, list) and all(
        isinstance(n, int) and not isinstance(n, bool) and (n > 0 if positive else n >= 0)
        for n in value
    )


def array_records(m: Mapping[str, Any], where: str) -> dict[str, dict[str, Any]] | list[str]:
    """Return the manifest's ``arrays`` after checking their form (nothing is read).

    A dict of records for format 2 and later, a list of names for format 1.

    Args:
        m: The manifest.
        where: The manifest's path, for messages.

    Raises:
        SavedModelError: Naming the array whose record is malformed.
    """
    raw = m.get("arrays")
    names = list(raw) if isinstance(raw, dict | list) else None
    if names is None or not all(isinstance(n, str) for n in names):
        raise SavedModelError(f"{where}: `arrays` must list the arrays of {mf.STATE}.")
    for name in names:
        parts = name.split("/")
        if len(parts) > 3 or not all(_NAME.fullmatch(p) and p not in (".", "..") for p in parts):
            raise SavedModelError(f"{where}: {name!r} is not the name of a saved array.")
    if isinstance(raw, list):
        return names
    out: dict[str, dict[str, Any]] = {}
    assert isinstance(raw, dict)
    for name, rec in raw.items():
        ok = isinstance(rec, dict) and rec.get("dtype") in DTYPES
        ok = ok and _ints(rec.get("shape"), False) and _ints(rec.get("chunks"), True)
        ok = ok and len(rec["chunks"]) == len(rec["shape"])
        if not ok:
            raise SavedModelError(
                f"{where}: the record of the array {name!r} needs a `shape` of non-negative "
                f"integers, `chunks` of positive integers and a `dtype` of {sorted(DTYPES)}."
            )
        out[name] = rec
    return out


def _grid(shape: list[int], chunks: list[int]) -> list[int]:
    return [-(-n // c) for n, c in zip(shape, chunks, strict=True)]


def _keys(grid: list[int]) -> Iterator[str]:
    if not grid:
        yield "c"
        return
    for index in itertools.product(*(range(n) for n in grid)):
        yield "c/" + "/".join(str(i) for i in index)


def _listing(folder: Folder) -> dict[str, int]:
    """Every file under ``state.zarr``: its key (path inside the group) and size."""
    root = folder.path(mf.STATE)
    if not folder.exists(mf.STATE):
        raise SavedModelError(f"{folder.url_of(mf.STATE)} is missing from the saved model. {_FIX}")
    found = folder.fs.find(root, detail=True)
    prefix = folder.fs._strip_protocol(root).rstrip("/") + "/"
    out = {}
    for path, info in found.items():
        rel = folder.fs._strip_protocol(path)
        if rel.startswith(prefix):
            out[rel[len(prefix) :]] = int(info.get("size") or 0)
    return out


def _check_metadata(
    folder: Folder, name: str, rec: Mapping[str, Any], files: dict[str, int]
) -> None:
    label = f"{folder.url_of(mf.STATE)}/{name}/zarr.json"
    if f"{name}/zarr.json" not in files:
        raise SavedModelError(f"{label} is missing from the saved model. {_FIX}")
    try:
        meta = json.loads(folder.read_text(f"{mf.STATE}/{name}/zarr.json"))
        codecs = [c.get("name") for c in meta.get("codecs", [])]
        endian = meta["codecs"][0].get("configuration", {}).get("endian", "little")
        chunks = meta["chunk_grid"]["configuration"]["chunk_shape"]
        same = (
            meta.get("node_type") == "array"
            and meta.get("shape") == rec["shape"]
            and meta.get("data_type") == rec["dtype"]
            and chunks == rec["chunks"]
            and codecs == ["bytes", "crc32c"]
            and endian == "little"
            and meta.get("chunk_key_encoding", {}).get("name") == "default"
        )
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, UnicodeDecodeError):
        same = False
    if not same:
        raise SavedModelError(
            f"{label} does not describe the array {mf.MANIFEST} records (shape "
            f"{rec['shape']}, dtype {rec['dtype']}, chunks {rec['chunks']}, stored "
            f"uncompressed with a checksum). {_FIX}"
        )


def _check_chunks(folder: Folder, name: str, rec: Mapping[str, Any], files: dict[str, int]) -> None:
    """Every chunk file is present with the size of a whole chunk and its checksum."""
    grid = _grid(rec["shape"], rec["chunks"])
    expected = math.prod(grid)
    size = math.prod(rec["chunks"]) * np.dtype(rec["dtype"]).itemsize + 4
    prefix = f"{name}/c"
    present = {
        k[len(name) + 1 :]: v for k, v in files.items() if k == prefix or k.startswith(prefix + "/")
    }
    if expected > len(present) or (expected == 0 and present):
        missing = next((k for k in _keys(grid) if k not in present), None)
        what = f"{name}/{missing}" if missing is not None else f"{name}/c"
        raise SavedModelError(
            f"{folder.url_of(mf.STATE)}/{what} is missing from the saved model. {_FIX}"
        )
    for key in _keys(grid):
        got = present.get(key)
        if got is None:
            raise SavedModelError(
                f"{folder.url_of(mf.STATE)}/{name}/{key} is missing from the saved model. {_FIX}"
            )
        if got != size:
            raise SavedModelError(
                f"{folder.url_of(mf.STATE)}/{name}/{key} holds {got} bytes instead of {size}: "
                f"it was truncated or damaged after the model was saved. {_FIX}"
            )


def read_arrays(
    folder: Folder, records: dict[str, dict[str, Any]] | list[str], defer: str | None = None
) -> dict[str, np.ndarray | StoredArray]:
    """Read the arrays of ``state.zarr``, checked as the module says.

    Args:
        folder: The saved model's folder.
        records: What :func:`array_records` returned.
        defer: A name prefix: arrays under it of :data:`DEFER_BYTES` or more
            are checked now and returned as :class:`StoredArray` (a model
            saved before checksums has its arrays read all the same).

    Raises:
        SavedModelError: Naming the first file that is missing, of the wrong
            size, or whose checksum does not match.
    """
    if not records:
        return {}
    if isinstance(records, list):
        warn(
            f"The model at {folder} was saved by a dopax that wrote no checksums: its arrays "
            "are read unverified. Save it again with this version to add them.",
            UserWarning,
        )
        root = zarr.open_group(folder.zarr_store(mf.STATE, read_only=True), mode="r")
        old: dict[str, np.ndarray | StoredArray] = {}
        for name in records:
            try:
                array = root[name]
            except KeyError as err:
                raise SavedModelError(
                    f"{folder.url_of(mf.STATE)}/{name} is missing from the saved model. {_FIX}"
                ) from err
            if not isinstance(array, zarr.Array):
                raise SavedModelError(f"{folder.url_of(mf.STATE)}/{name} is not an array.")
            old[name] = np.asarray(array[...])
        return old
    files = _listing(folder)
    if "zarr.json" not in files:
        raise SavedModelError(
            f"{folder.url_of(mf.STATE)}/zarr.json is missing from the saved model. {_FIX}"
        )
    for name, rec in records.items():
        _check_metadata(folder, name, rec, files)
        _check_chunks(folder, name, rec, files)
    store = ModelStore(folder.zarr_store(mf.STATE, read_only=True), label=folder.url_of(mf.STATE))
    out: dict[str, np.ndarray | StoredArray] = {}
    for name, rec in records.items():
        array = zarr.open_array(store, path=name, mode="r", zarr_format=3)
        shape, dtype = tuple(rec["shape"]), np.dtype(rec["dtype"])
        assert array.shape == shape and array.dtype == dtype
        if defer is not None and name.startswith(defer) and array.nbytes >= DEFER_BYTES:
            out[name] = StoredArray(store, name, shape, dtype, _digest_of(array))
        else:
            out[name] = np.asarray(array[...])
    return out
