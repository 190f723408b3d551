"""Running a streamed call's blocks as tasks on a Dask cluster.

The driver creates the store (metadata, coordinates, the posterior), ships
the job to every worker once (``scatter`` with ``broadcast=True``: the
kernel, the posterior draws and the inputs, or only a reference to inputs
the workers read themselves, such as a Zarr array), submits one task per
group of blocks, and writes the completion marker once every task has
finished. Each task computes its blocks with the same keys as the local
engine and writes their chunks straight into the store, so the driver never
holds the draws. Chunk writes are idempotent (whole chunks, renamed into
place or overwritten), so a block recomputed after a worker is lost writes
the same bytes again and the result is complete and identical.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from dopax.config import ExecutionConfig
from dopax.execution.delivery import BlockReduction, Delivery
from dopax.execution.runner import Block, BlockJob, forward_consumer, run_blocks
from dopax.output.location import Location
from dopax.output.schema import SiteLayout
from dopax.parallel.batching import BlockPlan
from dopax.parallel.sharded import OutputAxes
from dopax.streaming.sinks import ZarrSink
from dopax.streaming.stream import Submit, writer_pool
from dopax.streaming.targets import sink_at

__all__ = ["Payload", "run_on_cluster"]

logger = logging.getLogger("dopax")

#: Blocks computed by one task: enough that a task's writer threads overlap
#: its compute, few enough that a lost worker costs little to recompute.
_BLOCKS_PER_TASK = 4


@dataclasses.dataclass
class Payload:
    """What every worker holds for one call (shipped once).

    Attributes:
        job: The block job (its call key as raw key data, see ``key_impl``).
        key_impl: The PRNG implementation of the call key.
        blocks: How the job is cut into blocks.
        group: The result group the outputs go to.
        layouts: The streamed variables' layouts.
        where: The store's location, or ``None`` when nothing is stored.
        config: Execution settings of the call.
        reduction: What each block writes and what the driver keeps of it
            (:class:`ForwardBlocks` for a forward pass).
    """

    job: BlockJob
    key_impl: str
    blocks: BlockPlan
    group: str
    layouts: Sequence[SiteLayout]
    where: Location | None
    config: ExecutionConfig
    reduction: BlockReduction


_attached: dict[int, tuple[Payload, BlockJob, ZarrSink | None]] = {}


def _prepare(payload: Payload) -> tuple[BlockJob, ZarrSink | None]:
    """Rebuild the job and attach to the store, once per payload on each worker."""
    import jax

    cached = _attached.get(id(payload))
    if cached is not None and cached[0] is payload:
        return cached[1], cached[2]
    key = jax.random.wrap_key_data(jax.numpy.asarray(payload.job.call_key), impl=payload.key_impl)
    job = dataclasses.replace(payload.job, call_key=key)
    sink = None
    if payload.where is not None:
        sink = ZarrSink.attach(payload.where, payload.layouts, payload.config)
    if len(_attached) > 8:
        _attached.clear()
    _attached[id(payload)] = (payload, job, sink)
    return job, sink


@dataclasses.dataclass(frozen=True)
class ForwardBlocks:
    """A forward pass's blocks in a cluster task: every output written, nothing kept.

    Attributes:
        axes: The block program's outputs.
        group: The result group they go to.
    """

    axes: tuple[OutputAxes, ...]
    group: str

    def write(self, block: Block, outputs: dict[str, Any], submit: Submit) -> None:
        """Hand every output of the block to ``submit``."""
        forward_consumer(self.axes, self.group, submit)(block, outputs)

    def record(self, block: Block, outputs: dict[str, Any]) -> None:
        """Keep nothing: the outputs are in the store."""


def compute_blocks(payload: Payload, select: Sequence[tuple[int, int, int, int]]) -> list[Any]:
    """Compute ``select`` blocks of the payload's job; return what the driver keeps of each.

    Runs on a worker. Each block writes what the payload's reduction writes
    (into the store, when the call stores anything) and gives the record the
    driver keeps, as the same reduction does for blocks run locally.

    Args:
        payload: The call's payload.
        select: The blocks, as ``(d0, d1, r0, r1)``.
    """
    import contextlib

    import dask

    job, sink = _prepare(payload)
    reduction = payload.reduction
    records: list[Any] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(dask.config.set(scheduler="synchronous"))
        submit = None
        if sink is not None:
            submit = stack.enter_context(
                writer_pool(sink, max(1, len(payload.layouts)), payload.config)
            ).submit

        def consume(block: Block, outputs: dict[str, Any]) -> None:
            if submit is not None:
                reduction.write(block, outputs, submit)
            records.append(reduction.record(block, outputs))

        run_blocks(job, payload.blocks, consume, select=select)
    return records


def run_on_cluster(
    client: Any,
    job: BlockJob,
    blocks: BlockPlan,
    delivery: Delivery,
    *,
    where: Location | None,
    keepalive: object | None,
) -> xr.DataTree | None:
    """Run a job's blocks as tasks on ``client``'s cluster, writing into the store at ``where``.

    A forward job's tasks write their outputs; a reducing job's tasks
    (``delivery.reduction`` given) write what its reduction writes and return
    each block's record, which ``delivery.collect`` receives in block order
    as the tasks finish (then the late attributes are written). On any
    failure (a task's error, Ctrl-C) the remaining tasks are cancelled, the
    store is removed so nothing reads as complete, and the error propagates.

    Args:
        client: A ``dask.distributed.Client``.
        job: The block job.
        blocks: How it is cut into blocks.
        delivery: What the blocks deliver: the group, the layouts, the
            static groups and root attributes, the driver's own writes (the
            observed data), the call's settings and progress bar.
        where: The store's location (workers must reach it: a shared folder or
            a URL), or ``None`` when nothing is stored.
        keepalive: What the finished result keeps referenced.

    Returns:
        The finished result, or ``None`` when nothing is stored.
    """
    import jax
    from distributed import as_completed

    layouts = delivery.layouts if delivery.stored else []
    reduction, driver_writes, desc = delivery.reduction, delivery.driver_writes, delivery.label

    if where is not None and where.path is None and where.url is None:
        raise ValueError(
            "With `client=`, `output_dir` must be a folder the workers share or a URL; "
            "a zarr store object cannot be shared with the workers."
        )
    sink = sink_at(where, keepalive, delivery.output.config) if where is not None else None
    if sink is not None:
        sink.open(layouts, static=delivery.static, attrs=delivery.attrs)
    futures: list[Any] = []
    try:
        for layout, index, values in driver_writes:
            assert sink is not None
            sink.write(layout.group, layout.name, index, values)
        shipped = dataclasses.replace(
            job,
            call_key=np.asarray(jax.random.key_data(job.call_key)),  # type: ignore[arg-type]
        )
        payload = Payload(
            shipped,
            str(jax.random.key_impl(job.call_key)),
            blocks,
            delivery.group,
            [layout for layout in layouts if all(layout is not w[0] for w in driver_writes)],
            where,
            dataclasses.replace(delivery.output.config, client=None),
            reduction or ForwardBlocks(tuple(job.program.outputs), delivery.group),
        )
        [remote] = client.scatter([payload], broadcast=True, hash=False)
        all_blocks = blocks.blocks()
        call = uuid.uuid4().hex[:8]
        for i in range(0, len(all_blocks), _BLOCKS_PER_TASK):
            select = all_blocks[i : i + _BLOCKS_PER_TASK]
            futures.append(
                client.submit(
                    compute_blocks, remote, select, key=f"dopax-{desc}-{call}-{i}", retries=1
                )
            )
        results: dict[int, Any] = {}
        order = {future.key: n for n, future in enumerate(futures)}
        units = [
            sum(
                delivery.progress_of(r1 - r0, d1 - d0)
                for d0, d1, r0, r1 in all_blocks[i : i + _BLOCKS_PER_TASK]
            )
            for i in range(0, len(all_blocks), _BLOCKS_PER_TASK)
        ]
        with tqdm(
            total=delivery.total,
            desc=desc,
            unit_scale=True,
            disable=not delivery.output.progress,
            leave=False,
        ) as bar:
            taken = 0
            for future in as_completed(futures):
                n = order[future.key]
                results[n] = future.result()
                bar.update(units[n])
                # records go to ``collect`` in block order, each task's as soon
                # as every task before it is in, so the driver holds no more
                while taken in results:
                    records = results.pop(taken)
                    if delivery.collect is not None:
                        delivery.collect(records)
                    taken += 1
        if sink is not None and delivery.late_attrs is not None:
            sink.add_attrs(delivery.late_attrs())
    except BaseException:
        for future in futures:
            future.cancel()
        if sink is not None:
            sink.abort()
        raise
    logger.info("%s: %d tasks on the cluster", desc, len(futures))
    return sink.close() if sink is not None else None
