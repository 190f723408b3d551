"""The span last read from a chunked store, kept for the next read that falls inside it.

A block smaller than the store's chunks would otherwise decompress each chunk
once per block that touches it. Readers of chunked inputs and of stored
posterior draws read whole chunks and keep that span while it fits their
window (``ExecutionConfig.input_window_bytes``), so each chunk is decompressed
once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

__all__ = ["ReadWindow"]


class ReadWindow:
    """One kept span of rows (along one axis) of a source; thread-safe, pickled empty.

    Reads go through :meth:`read` one at a time, so two threads never read
    the same chunks twice, and the old span is dropped before a new one is
    read, so at most one is held.
    """

    def __init__(self) -> None:
        self._span: tuple[Hashable, int, int, np.ndarray] | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def read(
        self,
        tag: Hashable,
        start: int,
        stop: int,
        load: Callable[[], tuple[int, int, np.ndarray, bool]],
        axis: int = 0,
    ) -> np.ndarray:
        """Return rows ``start:stop`` along ``axis``: from the kept span, or from ``load``.

        Args:
            tag: What else the span depends on (e.g. its draws); a span read
                for another tag is not reused.
            start: First row.
            stop: One past the last row.
            load: Reads a span holding the rows; returns ``(lo, hi, data,
                keep)``: rows ``lo:hi`` and whether to keep them for the next
                read. It is called with the old span dropped.
            axis: The axis of the span's rows.
        """
        with self._lock:
            span = self._span
            if span is None or span[0] != tag or not (span[1] <= start and stop <= span[2]):
                self._span = None  # drop the old span before reading a new one
                lo, hi, data, keep = load()
                span = (tag, lo, hi, data)
                if keep:
                    self._span = span
            lo, data = span[1], span[3]
            return data[(slice(None),) * axis + (slice(start - lo, stop - lo),)]  # type: ignore[no-any-return]
