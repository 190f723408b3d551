"""A streamed call end to end: executor -> writer pool -> sink -> result tree."""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import xarray as xr
from tqdm.auto import tqdm

from dopax.config import get_config
from dopax.output.schema import SiteLayout
from dopax.parallel.batching import BlockPlan
from dopax.streaming.executor import Job, run_job
from dopax.streaming.pipeline import WriterPool
from dopax.streaming.sinks import Sink

__all__ = ["stream_job"]

logger = logging.getLogger("dopax")


def stream_job(
    job: Job,
    blocks: BlockPlan,
    sink: Sink,
    *,
    group: str,
    layouts: Sequence[SiteLayout],
    static: Mapping[str, Mapping[str, Any]] | None,
    attrs: Mapping[str, Any],
    progress: bool,
    desc: str,
) -> xr.DataTree:
    """Run ``job`` block by block into ``sink`` and return the finished result.

    On any failure (an error in the kernel, a writer, the disk, or Ctrl-C) the
    writers stop, the sink is aborted so nothing reads as complete, and the
    original exception propagates.

    Args:
        job: The planned forward pass.
        blocks: How it is cut into blocks.
        sink: Where the outputs go.
        group: The output group of the streamed variables.
        layouts: Layout of each streamed variable.
        static: Small groups written whole (e.g. the posterior).
        attrs: Root attributes.
        progress: Whether to show a progress bar (rows per second).
        desc: Progress bar label.
    """
    cfg = get_config()
    bar = tqdm(
        total=job.n_rows * job.n_draws,
        desc=desc,
        unit="row-draw",
        unit_scale=True,
        disable=not progress,
        leave=False,
    )
    opened = False

    def open_sink() -> None:
        nonlocal opened
        if not opened:
            opened = True
            sink.open(layouts, static=static, attrs=attrs)

    started = time.perf_counter()
    try:
        with WriterPool(
            sink,
            threads=cfg.writer_threads,
            depth=cfg.pipeline_depth * max(len(layouts), 1),
            trim_memory=cfg.trim_memory,
        ) as pool:

            def emit(name: str, index: tuple[slice, ...], value: Any) -> None:
                # The sink is opened once the first block has been dispatched:
                # creating the store (metadata, coordinates, the posterior's
                # writer) then overlaps that block's computation.
                open_sink()
                pool.submit(group, name, index, value)

            def on_block(rows: int, draws: int) -> None:
                bar.update(rows * draws)

            run_job(job, blocks, emit, on_block=on_block)
            open_sink()  # a job with no blocks still gets its (empty) store
    except BaseException as err:
        if opened:
            sink.abort()
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            err.add_note(
                "dopax: the disk holding the output is full and the partial result was "
                "removed. Free space, pass another `output_dir`, or use `store='memory'`."
            )
        raise
    finally:
        bar.close()
    tree = sink.close()
    logger.info(
        "%s: %d draws x %d rows in %.2f s",
        desc,
        job.n_draws,
        job.n_rows,
        time.perf_counter() - started,
    )
    return tree
