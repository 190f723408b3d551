"""A bounded pool of writer threads between the producer of draws and a sink.

The producer (the main thread, computing chunks on the device) hands each
block to :meth:`WriterPool.submit`; writer threads convert it to a NumPy array
(for a JAX array this is the device-to-host transfer, kept off the main
thread so that the next chunk's computation overlaps it) and pass it to
:meth:`~dopax.streaming.sinks.Sink.write`.

At most ``depth`` blocks wait for a writer, and each writer holds at most one
block, so at most ``depth + threads`` submitted blocks are alive at once.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np

from dopax.exceptions import StreamingError
from dopax.streaming.memory import map_large_allocations, release_free_memory

if TYPE_CHECKING:
    import jax

    from dopax.streaming.sinks import Sink

__all__ = ["WriterPool"]

logger = logging.getLogger("dopax")


@dataclasses.dataclass(frozen=True, slots=True)
class _Item:
    group: str
    name: str
    index: tuple[slice, ...]
    block: np.ndarray | jax.Array


class WriterPool:
    """Writer threads that drain a bounded queue of blocks into a sink.

    Use as a context manager. On a normal exit it waits for every submitted
    block to be written, joins the threads and re-raises the first writer
    error, if any. On an exit by exception (``KeyboardInterrupt`` included)
    it drops the blocks still queued, lets each writer finish the block it
    holds, joins the threads and lets the exception propagate. No writer
    thread outlives the ``with`` block. The pool never closes or aborts the
    sink; its owner does that after the ``with`` block.

    Args:
        sink: Where blocks are written; its ``write`` must be thread-safe.
        threads: Number of writer threads, named ``dopax-writer-N``.
        depth: Number of submitted blocks that may wait for a writer before
            :meth:`submit` blocks.
        trim_memory: Keep resident memory close to live memory: large
            allocations get their own mappings (set once per process), and
            freed heap memory is returned to the system after every
            ``trim_every_bytes`` bytes of blocks written and when the
            pool closes (see :mod:`dopax.streaming.memory`).
        trim_every_bytes: Bytes of blocks written between two returns of
            freed heap memory (``ExecutionConfig.trim_every_bytes``).
        mmap_threshold_bytes: Allocations of at least this size get their own
            mappings (``ExecutionConfig.mmap_threshold_bytes``).

    Raises:
        ValueError: If ``threads`` or ``depth`` is less than 1.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        threads: int,
        depth: int,
        trim_memory: bool = False,
        trim_every_bytes: int = 1 << 30,
        mmap_threshold_bytes: int = 1 << 20,
    ) -> None:
        if threads < 1:
            raise ValueError("`threads` must be at least 1.")
        if depth < 1:
            raise ValueError("`depth` must be at least 1.")
        self._sink = sink
        self._trim_memory = trim_memory
        self._trim_every = int(trim_every_bytes)
        self._mmap_threshold = int(mmap_threshold_bytes)
        self._num_threads = threads
        self._depth = depth
        self._cond = threading.Condition()
        self._queue: collections.deque[_Item] = collections.deque()
        self._threads: list[threading.Thread] = []
        self._error: BaseException | None = None
        self._draining = False
        self._stopped = False
        self._state = "new"
        self._unreleased = 0  # bytes written since freed memory was last returned

    def __enter__(self) -> WriterPool:
        if self._state != "new":
            raise StreamingError("A WriterPool can be entered once.")
        self._state = "running"
        if self._trim_memory:
            map_large_allocations(self._mmap_threshold)
        try:
            for i in range(self._num_threads):
                thread = threading.Thread(target=self._work, name=f"dopax-writer-{i}", daemon=True)
                thread.start()
                self._threads.append(thread)
        except BaseException:
            self._stop()
            self._join()
            raise
        return self

    def submit(
        self,
        group: str,
        name: str,
        index: tuple[slice, ...],
        block: np.ndarray | jax.Array,
    ) -> None:
        """Queue one block for writing; block while ``depth`` blocks are waiting.

        Args:
            group: The variable's group.
            name: The variable's name.
            index: Slices into the flat layout ``(S, *shape)`` of the variable.
            block: The values, a NumPy or JAX array; a writer thread converts
                it with :func:`numpy.asarray`.

        Raises:
            StreamingError: If the pool is not running.
            BaseException: The first error raised by a writer (the original
                exception, e.g. the ``OSError`` of a full disk).
        """
        with self._cond:
            if self._state != "running":
                raise StreamingError(f"Cannot submit to a WriterPool that is {self._state}.")
            while len(self._queue) >= self._depth and self._error is None and not self._stopped:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            if self._stopped:  # pragma: no cover - only reachable after a failed __enter__
                raise StreamingError("The WriterPool has stopped.")
            self._queue.append(_Item(group, name, index, block))
            self._cond.notify_all()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_value is None:
            with self._cond:
                self._draining = True
                self._cond.notify_all()
            try:
                self._join()
            except BaseException:
                self._stop()
                self._join()
                self._state = "closed"
                raise
            self._state = "closed"
            if self._error is not None:
                raise self._error
            return
        self._stop()
        self._join()
        self._state = "closed"
        if self._error is not None and self._error is not exc_value:
            logger.warning(
                "A writer thread also failed while the producer raised %r.",
                exc_value,
                exc_info=self._error,
            )

    def _stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._queue.clear()
            self._cond.notify_all()

    def _join(self) -> None:
        for thread in self._threads:
            thread.join()
        if self._trim_memory:
            release_free_memory()

    def _next(self) -> _Item | None:
        with self._cond:
            while not self._queue and not self._draining and not self._stopped:
                self._cond.wait()
            if self._stopped or not self._queue:
                return None
            item = self._queue.popleft()
            self._cond.notify_all()
            return item

    def _write(self, item: _Item) -> int:
        """Write one block to the sink and return its size in bytes."""
        array = np.asarray(item.block)
        self._sink.write(item.group, item.name, item.index, array)
        return int(array.nbytes)

    def _count_written(self, nbytes: int) -> bool:
        """Add ``nbytes`` written; return whether freed memory is due to be returned.

        The heap arenas of the process's threads keep the high-water mark of
        their allocations below the mmap threshold, and over hundreds of
        blocks those marks add up. Returning freed memory every
        ``trim_every_bytes`` keeps them down at little cost per byte written.
        """
        with self._cond:
            self._unreleased += nbytes
            if self._unreleased < self._trim_every:
                return False
            self._unreleased = 0
            return True

    def _work(self) -> None:
        while True:
            item = self._next()
            if item is None:
                return
            try:
                nbytes = self._write(item)
                item = None
                if self._trim_memory and self._count_written(nbytes):
                    release_free_memory()
            except BaseException as error:
                logger.debug("Writer %s failed", threading.current_thread().name, exc_info=True)
                with self._cond:
                    if self._error is None:
                        self._error = error
                    self._stopped = True
                    self._queue.clear()
                    self._cond.notify_all()
                return
            item = None
