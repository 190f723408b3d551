"""File-system care of the Zarr sink.

A result folder is never recreated once deleted, and store work is never left
running behind the caller's back by an interruption.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import os
import shutil
from collections.abc import Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import zarr
import zarr.api.asynchronous
import zarr.errors
from zarr.abc.store import Store
from zarr.core.buffer import Buffer
from zarr.core.sync import _get_loop
from zarr.storage import LocalStore

from dopax._warn import ignoring

__all__ = [
    "FolderGuard",
    "GuardedLocalStore",
    "clear_store",
    "finish_store",
    "remove_written",
    "run_to_end",
]

T = TypeVar("T")


def run_to_end(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on Zarr's event loop and return its result.

    Unlike ``zarr.core.sync.sync``, an interruption (Ctrl-C) in the caller's
    thread does not leave the coroutine running on the loop's thread: the
    caller waits for it to end (store work is short: metadata, a marker)
    before the interruption propagates, so whatever removes a failed result
    afterwards finds every file the coroutine wrote. (Cancelling would not
    do: Zarr writes files in worker threads that a cancelled task leaves
    running.)

    Args:
        coro: The coroutine.
    """
    future = asyncio.run_coroutine_threadsafe(coro, _get_loop())
    interrupted: BaseException | None = None
    while True:
        try:
            concurrent.futures.wait([future])
            break
        except BaseException as err:  # Ctrl-C: finish the store work first
            interrupted = interrupted or err
    if interrupted is not None:
        raise interrupted
    return future.result()


#: Zarr's warning that consolidated metadata is not part of format 3 (expected here).
CONSOLIDATED_WARNING = "Consolidated metadata is currently not part"


def finish_store(store: Store, marker: str, attrs: Mapping[str, Any] | None = None) -> None:
    """Consolidate a result's metadata, then set its completion ``marker`` (the last write).

    Zarr's warning that format 3 has no standard for consolidated metadata
    is expected: it is ignored while the calling thread waits, so the
    (process-wide) warning filter is changed by one thread at a time, never
    inside Zarr's event loop, where other calls' coroutines interleave.

    Args:
        store: The result's store.
        marker: The root attribute that marks the result complete.
        attrs: Further root attributes, written with the marker.
    """

    async def finish() -> None:
        await zarr.api.asynchronous.consolidate_metadata(store, zarr_format=3)
        root = await zarr.api.asynchronous.open_group(store, mode="r+", use_consolidated=True)
        await root.update_attributes({**dict(attrs or {}), marker: True})

    with ignoring(CONSOLIDATED_WARNING, zarr.errors.ZarrUserWarning):
        run_to_end(finish())


class FolderGuard:
    """Knows a result folder by its identity, so its deletion is noticed and never undone.

    Writers create a chunk's sub-folders below the folder only, never the
    folder itself: a folder deleted while a call writes into it (by the user,
    or ``model.cleanup()``) makes the writes fail instead of recreating a
    partial result.

    Args:
        root: The result folder; it must exist.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._identity = self._stat()
        if self._identity is None:
            raise FileNotFoundError(errno.ENOENT, f"The result folder {root} does not exist.")

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.root)
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def check(self) -> None:
        """Raise ``FileNotFoundError`` if the folder was deleted (or replaced) since it was made."""
        if self._stat() != self._identity:
            raise FileNotFoundError(
                errno.ENOENT,
                f"The result folder {self.root} was deleted while the result was being "
                "written; the call is abandoned.",
            )

    @contextlib.contextmanager
    def explaining_loss(self) -> Iterator[None]:
        """Run a write; if it meets ENOENT because the folder went meanwhile, say so.

        A folder deleted between :meth:`check` and the write surfaces as
        Zarr's or the OS's bare ``[Errno 2]`` on some file below it; this
        turns it into :meth:`check`'s message.
        """
        try:
            yield
        except FileNotFoundError:
            self.check()
            raise

    def makedirs(self, folder: Path) -> None:
        """Create ``folder`` and its parents below the root (never the root itself).

        Args:
            folder: A folder inside the root.
        """
        self.check()
        parts = folder.relative_to(self.root).parts
        current = self.root
        with self.explaining_loss():
            for part in parts:
                current = current / part
                with contextlib.suppress(FileExistsError):
                    os.mkdir(current)
        self.check()


class GuardedLocalStore(LocalStore):
    """A :class:`zarr.storage.LocalStore` whose writes check the folder is still the same.

    Zarr creates a key's parent folders as it writes, the root included; this
    store refuses to write once its root has been deleted.

    Args:
        guard: The guard of the store's root.
    """

    def __init__(self, guard: FolderGuard) -> None:
        super().__init__(guard.root)
        self.guard = guard

    def with_read_only(self, read_only: bool = False) -> Any:  # noqa: D102
        return LocalStore(self.root, read_only=read_only)

    async def _open(self, *, mode: Any = None) -> None:
        self.guard.check()
        await super()._open(mode=mode)

    async def _set(self, key: str, value: Buffer, exclusive: bool = False) -> None:
        self.guard.check()
        with self.guard.explaining_loss():
            await super()._set(key, value, exclusive=exclusive)


async def clear_store(store: Store) -> None:
    """Remove every key of ``store``.

    An fsspec store's prefix goes in one recursive removal: Zarr's ``clear``
    removes its listing entry by entry and stops at the first entry an
    earlier recursive removal already took (``posterior/beta`` after
    ``posterior``), leaving every later group (``posterior_predictive``).
    """
    fs, path = getattr(store, "fs", None), getattr(store, "path", None)
    if fs is None or path is None or not getattr(fs, "async_impl", False):
        await store.clear()
        return
    with contextlib.suppress(FileNotFoundError):
        await fs._rm(path, recursive=True)


def remove_written(path: Path | None, created_folder: bool, store: Store | None) -> None:
    """Remove what a sink wrote.

    Its folder if it made it, else the folder's contents (a folder the caller
    handed in stays), else every key of ``store``.
    """
    if path is not None:
        if created_folder:
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_dir():
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
    elif store is not None:
        run_to_end(clear_store(store))
