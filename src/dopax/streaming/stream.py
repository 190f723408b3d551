"""A streamed call end to end: block runner -> writer pool -> sink -> result tree."""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import xarray as xr
from tqdm.auto import tqdm

from dopax.config import ExecutionConfig
from dopax.output.schema import SiteLayout
from dopax.streaming.pipeline import WriterPool
from dopax.streaming.sinks import Sink, StaticData

__all__ = ["Progress", "Submit", "stream_into", "writer_pool"]

logger = logging.getLogger("dopax")

#: Queues one block of one variable: ``submit(group, name, index, block)``.
Submit = Callable[[str, str, tuple[slice, ...], Any], None]


class Progress:
    """A call's progress bar, shown from the call's start, and its log lines.

    Until the blocks run, the bar says what is being prepared (tracing the
    kernel, compiling its program), so a first call that compiles shows
    something before compilation starts; the same lines go to the ``dopax``
    logger at ``INFO`` level.

    Args:
        desc: The call's label (e.g. ``"predict"``).
        enabled: Whether to show the bar.
        unit: Unit of progress.
    """

    def __init__(self, desc: str, enabled: bool, unit: str = "row-draw") -> None:
        self.desc = desc
        self.bar = tqdm(
            total=None,
            desc=desc,
            unit=unit,
            unit_scale=True,
            disable=not enabled,
            leave=False,
        )

    def stage(self, what: str) -> None:
        """Say what is being prepared."""
        logger.info("%s: %s", self.desc, what)
        self.bar.set_description_str(f"{self.desc}: {what}")

    def start(self, total: int) -> None:
        """Start counting ``total`` units of work."""
        self.bar.reset(total=total)
        self.bar.set_description_str(self.desc)

    def update(self, n: int) -> None:
        """Count ``n`` units done (the last update is always shown)."""
        self.bar.update(n)
        if self.bar.total is not None and self.bar.n >= self.bar.total:
            self.bar.refresh()

    def close(self) -> None:
        """Remove the bar."""
        self.bar.close()


def writer_pool(sink: Sink, depth_per_variable: int, config: ExecutionConfig) -> WriterPool:
    """Return a writer pool for ``sink`` set up from the call's execution settings.

    Args:
        sink: The sink the writers write into.
        depth_per_variable: Variables written per block (the queue holds
            ``pipeline_depth`` blocks of each).
        config: The call's execution settings.
    """
    return WriterPool(
        sink,
        threads=config.writer_threads,
        depth=config.pipeline_depth * max(depth_per_variable, 1),
        trim_memory=config.trim_memory,
        trim_every_bytes=config.trim_every_bytes,
        mmap_threshold_bytes=config.mmap_threshold_bytes,
    )


def stream_into(
    sink: Sink,
    run: Callable[[Submit, Callable[[int], None]], None],
    *,
    layouts: Sequence[SiteLayout],
    static: StaticData | None,
    attrs: Mapping[str, Any],
    total: int,
    progress: bool | Progress,
    desc: str,
    config: ExecutionConfig,
    finish: Callable[[xr.DataTree], Any] | None = None,
    late_attrs: Callable[[], Mapping[str, Any]] | None = None,
) -> Any:
    """Run ``run`` with writers into ``sink`` and return the finished result.

    The sink is opened once the first block has been dispatched, so creating
    the store (metadata, coordinates, the posterior's writer) overlaps that
    block's computation. On any failure (an error in the kernel, a writer,
    the disk, or Ctrl-C) the writers stop, the sink is aborted so nothing
    reads as complete, and the original exception propagates.

    Args:
        sink: Where the outputs go.
        run: Called as ``run(submit, advance)``: it computes the blocks,
            queues each with ``submit`` and reports progress with ``advance``.
        layouts: Layout of each streamed variable.
        static: Small groups written whole (e.g. the posterior).
        attrs: Root attributes.
        total: Units of progress in the whole call.
        progress: Whether to show a progress bar, or the call's :class:`Progress`
            (closed here).
        desc: Progress bar label.
        config: The call's execution settings (its writers).
        finish: Called with the finished result; its return value is the
            call's. If it fails, the result is removed.
        late_attrs: Called once every block is written; returns root
            attributes that depend on all of them (e.g. a coverage).
    """
    bar = progress if isinstance(progress, Progress) else Progress(desc, progress)
    bar.start(total)
    opened = False

    def open_sink() -> None:
        nonlocal opened
        if not opened:
            opened = True
            sink.open(layouts, static=static, attrs=attrs)

    started = time.perf_counter()
    try:
        with writer_pool(sink, len(layouts), config) as pool:

            def submit(group: str, name: str, index: tuple[slice, ...], value: Any) -> None:
                open_sink()
                pool.submit(group, name, index, value)

            run(submit, bar.update)
            open_sink()  # a call with no blocks still gets its (empty) store
        if late_attrs is not None:
            sink.add_attrs(late_attrs())
    except BaseException as err:
        if opened:
            sink.abort()
        _note_disk_full(err)
        raise
    finally:
        bar.close()
    try:
        tree = sink.close()  # on failure the sink removes what it wrote
    except BaseException as err:
        _note_disk_full(err)
        raise
    logger.info("%s: streamed in %.2f s", desc, time.perf_counter() - started)
    if finish is None:
        return tree
    try:
        return finish(tree)
    except BaseException:
        sink.discard()
        raise


def _note_disk_full(err: BaseException) -> None:
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        err.add_note(
            "dopax: the disk holding the output is full and the partial result was "
            "removed. Free space, pass another `output_dir`, or use `store='memory'`."
        )
