"""The executor: any block job, block by block, here or as tasks on a Dask cluster, into its sink.

Forward passes, reductions and scenario comparisons differ in what their
blocks deliver (:class:`~dopax.execution.delivery.Delivery`): the variables
streamed into the result, what the host keeps of each block, what the call
returns. How the blocks run is the same for all of them: :func:`execute` runs
them here, through the block runner, into a memory or Zarr sink (or into no
sink when nothing is stored), or ships them to a cluster's workers
(:mod:`dopax.execution.cluster`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dopax.execution.cluster import run_on_cluster
from dopax.execution.delivery import BlockReduction, Delivery
from dopax.execution.request import Output
from dopax.execution.runner import Block, BlockJob, Consume, run_blocks, sharding_of
from dopax.output import schema
from dopax.parallel.batching import BlockPlan
from dopax.streaming.sinks import MemorySink, Sink
from dopax.streaming.stream import Progress, Submit, stream_into
from dopax.streaming.targets import call_location, check_store, sink_for_call

__all__ = ["cluster_devices", "cluster_of", "execute", "result_attrs"]


def cluster_of(output: Output) -> Any:
    """Return the Dask client a call's blocks run on, or ``None`` to run them here.

    In-memory calls always run here; others on the call's ``client``, or the
    one its settings name.
    """
    if output.in_memory:
        return None
    return output.client if output.client is not None else output.config.client


def cluster_devices(client: Any) -> int:
    """Return how many worker processes a cluster has (its devices for the attributes)."""
    try:
        return max(1, len(client.scheduler_info().get("workers", {})))
    except Exception:  # pragma: no cover - a client that cannot say
        return 1


def result_attrs(job: BlockJob, extra: dict[str, Any], client: Any = None) -> dict[str, Any]:
    """Return a result's root attributes, with where it ran (devices, shard axis).

    Args:
        job: The block job.
        extra: The call's own attributes.
        client: The cluster the blocks run on (its workers are the devices),
            or ``None``.
    """
    shard_axis, n_dev = sharding_of(job)
    if client is not None:
        n_dev = cluster_devices(client)
    return schema.base_attrs(
        {**extra, schema.DEVICES_ATTR: n_dev, schema.SHARD_AXIS_ATTR: shard_axis}
    )


class _Behind:
    """Feeds a reduction's blocks to it, and its records to ``collect`` one block behind.

    Reading a block's outputs waits for the block to finish; one block
    behind, the next block is already dispatched, so the device does not
    wait for the host.

    Args:
        reduction: What each block writes and what the driver keeps of it.
        collect: Receives the records in block order.
    """

    def __init__(
        self, reduction: BlockReduction, collect: Callable[[list[Any]], None] | None
    ) -> None:
        self.reduction = reduction
        self.collect = collect
        self.pending: list[tuple[Block, dict[str, Any]]] = []

    def consumer(self, submit: Submit | None) -> Consume:
        """Return the blocks' consumer (``submit``: the writers'; ``None``: nothing stored)."""

        def consume(block: Block, outputs: dict[str, Any]) -> None:
            if submit is not None:
                self.reduction.write(block, outputs, submit)
            self.pending.append((block, outputs))
            if len(self.pending) > 1:
                self._take(1)

        return consume

    def _take(self, n: int) -> None:
        taken, self.pending = self.pending[:n], self.pending[n:]
        records = [self.reduction.record(block, outputs) for block, outputs in taken]
        if self.collect is not None and records:
            self.collect(records)

    def flush(self) -> None:
        """Take every block still held (once every block has run)."""
        self._take(len(self.pending))


def execute(
    job: BlockJob, blocks: BlockPlan, delivery: Delivery, *, client: Any, progress: Progress
) -> Any:
    """Run every block of ``job`` and return what ``delivery`` makes of the result.

    On any failure (an error in the kernel, a writer, the disk, a task, or
    Ctrl-C) the result is removed so nothing reads as complete, and the
    error propagates.

    Args:
        job: The job.
        blocks: How it is cut into blocks.
        delivery: What the blocks deliver, and where to.
        client: A ``dask.distributed.Client`` to run the blocks on, or
            ``None`` to run them here (see :func:`cluster_of`).
        progress: The call's progress bar (closed here once the blocks run).
    """
    output, temp_folder = delivery.output, delivery.temp_folder
    if client is not None:
        progress.close()  # the cluster's tasks have their own bar
        where, keep = None, None
        if delivery.stored:
            check_store(output.store, "persistent", "client=")
            where, keep = call_location(
                output.output_dir, delivery.folder, temp_folder, output.storage_options
            )
        tree = run_on_cluster(client, job, blocks, delivery, where=where, keepalive=keep)
        return delivery.finish(tree) if delivery.finish is not None else tree
    sink: Sink | None = None
    if output.in_memory:
        sink = MemorySink()
    elif delivery.stored:
        sink = sink_for_call(
            output.store,
            output.output_dir,
            delivery.folder,
            temp_folder,
            output.storage_options,
            output.config,
        )

    def run(submit: Submit | None, advance: Callable[[int], None]) -> None:
        held = None
        if delivery.reduction is None:
            assert delivery.consumer is not None and submit is not None
            consume = delivery.consumer(submit)
        else:
            held = _Behind(delivery.reduction, delivery.collect)
            consume = held.consumer(submit)
        run_blocks(
            job,
            blocks,
            consume,
            on_block=lambda rows, draws: advance(delivery.progress_of(rows, draws)),
        )
        if held is not None:
            held.flush()

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
        config=output.config,
    )
