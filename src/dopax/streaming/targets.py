"""Where a call's result goes: the one place a sink is chosen and its folder named."""

from __future__ import annotations

import shutil
import tempfile
import uuid
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from dopax.config import ExecutionConfig
from dopax.output.cleanup import retry_removals
from dopax.output.location import Location, location
from dopax.streaming.sinks import MemorySink, Sink, ZarrSink

__all__ = [
    "STORES",
    "ResultFolder",
    "TempFolder",
    "call_location",
    "check_output",
    "check_store",
    "sink_at",
    "sink_for_call",
]

#: Accepted values of the ``store`` argument.
STORES = ("persistent", "memory")


class TempFolder:
    """A temporary folder removed when no model or result references it any more.

    Results read lazily from inside it keep a reference, so the folder outlives
    the model for as long as a result needs it; :meth:`remove` deletes it at once.
    """

    def __init__(self) -> None:
        self.path = tempfile.mkdtemp(prefix="dopax-")
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.path, True)

    def remove(self) -> None:
        """Delete the folder now."""
        self._finalizer()

    @property
    def alive(self) -> bool:
        """Whether the folder has not been removed."""
        return self._finalizer.alive

    def __reduce__(self) -> Any:
        raise TypeError("A temporary output folder cannot be pickled.")


class ResultFolder:
    """A result's folder inside a model's temporary folder, removed with the result.

    The result tree (and every lazy array taken from it) keeps this object
    referenced; once none is left, the folder is deleted, so a long-lived
    model's temporary folder holds only the results still in use. It also
    keeps the model's temporary folder alive.

    Args:
        path: The result's folder.
        temp: The model's temporary folder holding it.
    """

    def __init__(self, path: str, temp: TempFolder) -> None:
        self.path = path
        self.temp = temp
        self._finalizer = weakref.finalize(self, shutil.rmtree, path, True)

    def __reduce__(self) -> Any:
        raise TypeError("A temporary result folder cannot be pickled.")


def check_store(store: Any, only: str | None = None, because: str = "") -> str:
    """Return ``store`` if it names a known store, else raise saying which exist.

    Args:
        store: The ``store`` argument of a call.
        only: The one store the call allows, if it allows one only.
        because: The argument that allows only ``only``, for the message.
    """
    if store not in STORES:
        raise ValueError(f"`store` must be 'persistent' or 'memory'; got {store!r}.")
    if only is not None and store != only:
        raise ValueError(
            f"`store={store!r}` cannot be used with `{because}`: workers write the result "
            f"into the store, so use store={only!r} (a shared folder or a URL as `output_dir`)."
        )
    return str(store)


def check_output(
    store: Any, output_dir: Any, storage_options: Mapping[str, Any] | None = None
) -> str:
    """Check a call's ``store`` and ``output_dir`` together; return the store.

    Args:
        store: The ``store`` argument.
        output_dir: The ``output_dir`` argument.
        storage_options: The ``storage_options`` argument.

    Raises:
        ValueError: For an unknown store, an ``output_dir`` with
            ``store="memory"`` (which writes nothing), an empty ``output_dir``
            or a URL with an unknown scheme.
        TypeError: For an ``output_dir`` that is no path, URL or zarr store.
    """
    store = check_store(store)
    if store == "memory" and output_dir is not None:
        raise ValueError(
            "`output_dir` is given but `store='memory'` writes nothing to disk; drop "
            "`output_dir`, or pass `store='persistent'` to write the result there."
        )
    if output_dir is not None:
        location(output_dir, storage_options)
    return store


def call_location(
    output_dir: Any,
    desc: str,
    temp_folder: Callable[[], TempFolder],
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[Location, object | None]:
    """Return where a call's persisted result goes, and what the result keeps alive.

    A new folder (or URL prefix) ``<desc>-<time>-<id>.zarr`` under
    ``output_dir`` (``~`` expanded once, by :func:`~dopax.output.location.location`),
    or under the model's temporary folder when ``output_dir`` is ``None``:
    such a result keeps that folder alive, and its own folder is deleted
    once the result is no longer referenced (:class:`ResultFolder`). A zarr
    store object given as ``output_dir`` holds the result at its root (it
    must be empty).

    Args:
        output_dir: Base folder, URL or zarr store, or ``None``.
        desc: The call's label, the start of the folder name.
        temp_folder: Returns the model's temporary folder.
        storage_options: fsspec options for a URL.
    """
    temp = temp_folder() if output_dir is None else None
    base = location(temp.path if temp is not None else output_dir, storage_options)
    if base.store is not None:
        return base, None
    stamp = np.datetime64("now").astype(str).replace(":", "").replace("-", "")
    where = base.child(f"{desc}-{stamp}-{uuid.uuid4().hex[:8]}.zarr")
    keep = ResultFolder(str(where.path), temp) if temp is not None else None
    return where, keep


def sink_for_call(
    store: str,
    output_dir: Any,
    desc: str,
    temp_folder: Callable[[], TempFolder],
    storage_options: Mapping[str, Any] | None,
    config: ExecutionConfig,
) -> Sink:
    """Return the sink of one call.

    ``store="memory"`` gives a :class:`MemorySink` whose predictive draws are
    Dask arrays chunked as a persisted result's would be; otherwise a
    :class:`ZarrSink` at :func:`call_location`: a local folder is written with
    the direct-file path, a URL or store through zarr's store API.

    Args:
        store: ``"persistent"`` or ``"memory"``.
        output_dir: Base folder, URL or zarr store, or ``None``.
        desc: The call's label, the start of the folder name.
        temp_folder: Returns the model's temporary folder.
        storage_options: fsspec options for a URL.
        config: The call's execution settings (a Zarr sink's codecs and writes).
    """
    if check_output(store, output_dir, storage_options) == "memory":
        return MemorySink(chunked=True)
    where, keep = call_location(output_dir, desc, temp_folder, storage_options)
    return sink_at(where, keep, config)


def sink_at(where: Location, keepalive: object | None, config: ExecutionConfig) -> ZarrSink:
    """Return a new Zarr sink writing to ``where``.

    Args:
        where: The result's location.
        keepalive: What the finished result keeps referenced.
        config: The call's execution settings.
    """
    retry_removals()  # what failed calls left, now that a call reaches a store again
    if where.path is not None:
        return ZarrSink(where.path, config=config, keepalive=keepalive)
    return ZarrSink(store=where.open_store(read_only=False), config=config, label=where.label)
