"""The executor: any block job, block by block, here or as tasks on a Dask cluster, into its sink.

Forward passes, reductions and scenario comparisons differ in what their
blocks deliver (:class:`Delivery`): the variables streamed into the result,
what the host keeps of each block, what the call returns. How the blocks run
is the same for all of them: :func:`execute` runs them here, through the
block runner, into a memory or Zarr sink (or into no sink when nothing is
stored), or ships them to a cluster's workers (:mod:`dopax.execution.cluster`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from dopax.config import ExecutionConfig
from dopax.execution.cluster import run_on_cluster
from dopax.execution.request import Output
from dopax.execution.runner import BlockJob, Consume, run_blocks, sharding_of
from dopax.output import schema
from dopax.output.schema import SiteLayout
from dopax.parallel.batching import BlockPlan
from dopax.streaming.sinks import MemorySink, Sink, StaticData
from dopax.streaming.stream import Progress, Submit, stream_into
from dopax.streaming.targets import TempFolder, call_location, check_store, sink_for_call

__all__ = ["Delivery", "cluster_devices", "cluster_of", "execute", "result_attrs"]


@dataclasses.dataclass
class Delivery:
    """What a job's blocks deliver, and what the call returns.

    Attributes:
        label: The call's label (its progress bar).
        folder: The name its new folder starts with (``<folder>-<time>-<id>.zarr``).
        group: The result group the streamed outputs go to.
        layouts: The variables streamed into the result.
        static: Small groups written whole (the posterior), or ``None``.
        attrs: The result's root attributes.
        total: Units of progress of the whole call.
        progress_of: Units of progress of a block of ``(rows, draws)``.
        consumer: Returns the consumer of each block's outputs, given the
            writers' ``submit`` (``None`` when nothing is stored).
        done: Called once every block has run here (what the consumer
            holds back is taken then).
        abort: Called when a block run here fails.
        finish: Turns the finished result (``None`` when nothing is stored)
            into the call's return value; if it fails, the result is removed.
        late_attrs: Returns root attributes that depend on every block.
        collect: On a cluster, receives the tasks' per-block reductions in
            block order (the tasks then reduce their blocks rather than
            write them; see :func:`~dopax.execution.cluster.run_on_cluster`).
        driver_writes: On a cluster, small variables the driver writes
            itself, as ``(layout, index, values)``.
        stored: Whether there is a result to store; without one the blocks
            only feed the consumer.
    """

    label: str
    folder: str
    group: str
    layouts: Sequence[SiteLayout]
    static: StaticData | None
    attrs: Mapping[str, Any]
    total: int
    progress_of: Callable[[int, int], int]
    consumer: Callable[[Submit | None], Consume]
    done: Callable[[], None] | None = None
    abort: Callable[[], None] | None = None
    finish: Callable[[xr.DataTree | None], Any] | None = None
    late_attrs: Callable[[], Mapping[str, Any]] | None = None
    collect: Callable[[list[Any]], None] | None = None
    driver_writes: Sequence[tuple[SiteLayout, tuple[slice, ...], np.ndarray]] = ()
    stored: bool = True


def cluster_of(output: Output, config: ExecutionConfig) -> Any:
    """Return the Dask client a call's blocks run on, or ``None`` to run them here.

    In-memory calls always run here; others on the call's ``client``, or the
    one the settings name.
    """
    if output.in_memory:
        return None
    return output.client if output.client is not None else config.client


def cluster_devices(client: Any) -> int:
    """Return how many worker processes a cluster has (its devices for the attributes)."""
    try:
        return max(1, len(client.scheduler_info().get("workers", {})))
    except Exception:  # pragma: no cover - a client that cannot say
        return 1


def result_attrs(job: BlockJob, extra: dict[str, Any]) -> dict[str, Any]:
    """Return a result's root attributes, with where it ran (devices, shard axis).

    Args:
        job: The block job.
        extra: The call's own attributes.
    """
    shard_axis, n_dev = sharding_of(job)
    return schema.base_attrs(
        {**extra, schema.DEVICES_ATTR: n_dev, schema.SHARD_AXIS_ATTR: shard_axis}
    )


def execute(
    job: BlockJob,
    blocks: BlockPlan,
    delivery: Delivery,
    *,
    output: Output,
    temp_folder: Callable[[], TempFolder],
    client: Any,
    config: ExecutionConfig,
    progress: Progress,
) -> Any:
    """Run every block of ``job`` and return what ``delivery`` makes of the result.

    On any failure (an error in the kernel, a writer, the disk, a task, or
    Ctrl-C) the result is removed so nothing reads as complete, and the
    error propagates.

    Args:
        job: The job.
        blocks: How it is cut into blocks.
        delivery: What the blocks deliver.
        output: Where the result goes (``store``, ``output_dir``, ...).
        temp_folder: Returns the model's temporary folder (the default ``output_dir``).
        client: A ``dask.distributed.Client`` to run the blocks on, or
            ``None`` to run them here (see :func:`cluster_of`).
        config: The call's execution settings.
        progress: The call's progress bar (closed here once the blocks run).
    """
    if client is not None:
        progress.close()  # the cluster's tasks have their own bar
        where, keep = None, None
        if delivery.stored:
            check_store(output.store, "persistent", "client=")
            where, keep = call_location(
                output.output_dir, delivery.folder, temp_folder, output.storage_options
            )
        tree = run_on_cluster(
            client,
            job,
            blocks,
            where=where,
            keepalive=keep,
            group=delivery.group,
            layouts=delivery.layouts if delivery.stored else [],
            static=delivery.static,
            attrs=delivery.attrs,
            config=config,
            progress=output.progress,
            desc=delivery.label,
            collect=delivery.collect,
            driver_writes=delivery.driver_writes,
        )
        return delivery.finish(tree) if delivery.finish is not None else tree
    sink: Sink | None = None
    if output.in_memory:
        sink = MemorySink()
    elif delivery.stored:
        sink = sink_for_call(
            output.store, output.output_dir, delivery.folder, temp_folder, output.storage_options
        )

    def run(submit: Submit | None, advance: Callable[[int], None]) -> None:
        consume = delivery.consumer(submit)
        try:
            run_blocks(
                job,
                blocks,
                consume,
                on_block=lambda rows, draws: advance(delivery.progress_of(rows, draws)),
            )
            if delivery.done is not None:
                delivery.done()
        except BaseException:
            if delivery.abort is not None:
                delivery.abort()
            raise

    if sink is None:
        progress.start(delivery.total)
        run(None, progress.update)
        return delivery.finish(None) if delivery.finish is not None else None
    return stream_into(
        sink,
        run,
        layouts=delivery.layouts,
        static=delivery.static,
        attrs=delivery.attrs,
        total=delivery.total,
        progress=progress,
        desc=delivery.label,
        finish=delivery.finish,
        late_attrs=delivery.late_attrs,
    )
