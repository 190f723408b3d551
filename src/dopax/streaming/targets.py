"""Where a call's result goes: the one place a sink is chosen and its folder named."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from dopax.streaming.sinks import MemorySink, Sink, ZarrSink

__all__ = [
    "STORES",
    "ResultFolder",
    "TempFolder",
    "base_folder",
    "check_output",
    "check_store",
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


def check_store(store: Any) -> str:
    """Return ``store`` if it names a known store, else raise saying which exist.

    Args:
        store: The ``store`` argument of a call.
    """
    if store not in STORES:
        raise ValueError(f"`store` must be 'persistent' or 'memory'; got {store!r}.")
    return str(store)


def check_output(store: Any, output_dir: Any) -> str:
    """Check a call's ``store`` and ``output_dir`` together; return the store.

    Args:
        store: The ``store`` argument.
        output_dir: The ``output_dir`` argument.

    Raises:
        ValueError: For an unknown store, or an ``output_dir`` with
            ``store="memory"`` (which writes nothing).
    """
    store = check_store(store)
    if store == "memory" and output_dir is not None:
        raise ValueError(
            "`output_dir` is given but `store='memory'` writes nothing to disk; drop "
            "`output_dir`, or pass `store='persistent'` to write the result there."
        )
    if output_dir is not None:
        base_folder(output_dir, create=False)
    return store


def base_folder(output_dir: Any, *, create: bool = True) -> str:
    """Return ``output_dir`` as an absolute folder path (``~`` expanded), creating it.

    The one place ``output_dir`` becomes a path: ``~`` is expanded here, once,
    so a folder named ``~`` is never created in the working directory.

    Args:
        output_dir: The ``output_dir`` argument (a path).
        create: Create the folder (and its parents) if missing.

    Raises:
        TypeError: If it is not a path.
        ValueError: If it is empty.
    """
    try:
        raw = os.fspath(output_dir)
    except TypeError:
        raise TypeError(
            f"`output_dir` must be a folder path (str or os.PathLike) or None; got "
            f"{type(output_dir).__name__}."
        ) from None
    if isinstance(raw, bytes):
        raw = os.fsdecode(raw)
    if not raw.strip():
        raise ValueError(
            "`output_dir` is an empty string; pass a folder path (e.g. 'results'), or None "
            "for the model's temporary folder."
        )
    base = os.path.abspath(os.path.expanduser(raw))
    if create:
        os.makedirs(base, exist_ok=True)
    return base


def sink_for_call(
    store: str, output_dir: Any, desc: str, temp_folder: Callable[[], TempFolder]
) -> Sink:
    """Return the sink of one call.

    ``store="memory"`` gives a :class:`MemorySink` whose predictive draws are
    Dask arrays chunked as a persisted result's would be. Otherwise a new Zarr
    folder ``<desc>-<time>-<id>.zarr`` is made under ``output_dir``, or under
    the model's temporary folder when ``output_dir`` is ``None``: such a
    result keeps that folder alive, and its own folder is deleted once the
    result is no longer referenced (:class:`ResultFolder`).

    Args:
        store: ``"persistent"`` or ``"memory"``.
        output_dir: Base folder, or ``None``.
        desc: The call's label, the start of the folder name.
        temp_folder: Returns the model's temporary folder.
    """
    if check_output(store, output_dir) == "memory":
        return MemorySink(chunked=True)
    temp = temp_folder() if output_dir is None else None
    base = temp.path if temp is not None else base_folder(output_dir)
    stamp = np.datetime64("now").astype(str).replace(":", "").replace("-", "")
    path = os.path.join(base, f"{desc}-{stamp}-{uuid.uuid4().hex[:8]}.zarr")
    keep = ResultFolder(path, temp) if temp is not None else None
    return ZarrSink(path, keepalive=keep)
