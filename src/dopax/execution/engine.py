"""The engine: one entry point per request, every call on the same runner and sizing policy."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import xarray as xr

from dopax.execution.context import ModelContext
from dopax.execution.delivery import Delivery
from dopax.execution.executor import cluster_of, execute, result_attrs
from dopax.execution.job import ForwardJob, forward_job
from dopax.execution.request import LOG_LIKELIHOOD, PRIOR, Output, PredictiveRequest
from dopax.execution.runner import (
    Block,
    Consume,
    forward_consumer,
    row_latent_bytes,
    splits_rows,
)
from dopax.execution.sizing import Footprint, size_blocks
from dopax.inference.posterior import stored_bytes_per_draw
from dopax.output import schema
from dopax.output.schema import SiteLayout
from dopax.parallel.batching import BlockPlan
from dopax.sampling.plan import FULL
from dopax.sampling.prepare import read_rows
from dopax.streaming.stream import Progress, Submit

__all__ = ["run_predictive"]

logger = logging.getLogger("dopax")


def _group(request: PredictiveRequest) -> str:
    if request.kind == PRIOR:
        return schema.PRIOR_PREDICTIVE
    if request.kind == LOG_LIKELIHOOD:
        return schema.LOG_LIKELIHOOD
    return schema.POSTERIOR_PREDICTIVE if request.in_sample else schema.PREDICTIONS


def _footprint(fj: ForwardJob, output: Output) -> Footprint:
    per_row = 0
    per_draw = 0
    for info in fj.plan.outputs:
        itemsize = np.dtype(info.dtype).itemsize
        if info.row_axis is None:
            per_draw += int(np.prod(info.shape, dtype=np.int64)) * itemsize
        else:
            rest = [s for i, s in enumerate(info.shape) if i != info.row_axis]
            per_row += int(np.prod(rest, dtype=np.int64)) * itemsize
    # draws read from a trace per block count against the budget (in-memory
    # draws are resident whatever the blocks); a block's slice of per-row
    # latent draws is read or copied for the block, in memory or not
    per_draw += stored_bytes_per_draw(fj.job.latent)
    per_row += row_latent_bytes(fj.job)
    cfg = output.config
    return Footprint(
        per_row=per_row,
        per_draw=per_draw,
        alive=cfg.pipeline_depth + cfg.writer_threads + 1,
        in_one_block=output.in_memory,
    )


def _layouts(fj: ForwardJob, group: str, blocks: BlockPlan) -> list[SiteLayout]:
    layouts = []
    for info in fj.plan.outputs:
        chunks = [1, blocks.draw_block, *info.shape]
        if info.row_axis is not None:
            chunks[2 + info.row_axis] = min(blocks.row_block, info.shape[info.row_axis]) or 1
        layouts.append(
            SiteLayout(
                group=group,
                name=info.name,
                num_chains=fj.chains,
                num_draws=fj.job.n_draws // fj.chains,
                shape=tuple(info.shape),
                dtype=info.dtype,
                chunks=tuple(max(c, 1) for c in chunks),
            )
        )
    return layouts


def _observed(
    ctx: ModelContext, request: PredictiveRequest, fj: ForwardJob, blocks: BlockPlan
) -> tuple[Any, SiteLayout] | None:
    """Return the observed output of a result and its layout, or ``None``.

    A log-likelihood result carries the call's ``y``; an in-sample
    predictive result the output the model was fitted on, when it has one
    entry per row of the call. The variable is chunked along rows like the
    draws.
    """
    name = ctx.param_output
    if request.kind == LOG_LIKELIHOOD:
        values = fj.job.inputs.rows.get(name)
    elif request.kind == PRIOR or not request.in_sample or request.observed is None:
        return None
    else:
        values = request.observed
    if values is None or np.ndim(values) == 0 or np.shape(values)[0] != fj.job.n_rows:
        return None
    shape = tuple(int(n) for n in np.shape(values))
    axis = _observed_axis(fj, name, shape)
    if axis is None:
        return None
    if axis:  # the site keeps its rows elsewhere (a scan's ``(T, units)``): so does the data
        values = _RowsMoved(values, axis)
        shape = tuple(values.shape)
    chunks = list(shape)
    chunks[axis] = max(1, min(blocks.row_block, shape[axis]))
    layout = SiteLayout(
        group=schema.OBSERVED_DATA,
        name=name,
        num_chains=1,
        num_draws=1,
        shape=shape,
        dtype=np.dtype(values.dtype).str,
        chunks=tuple(chunks),
    )
    return values, layout


def _observed_axis(fj: ForwardJob, name: str, shape: tuple[int, ...]) -> int | None:
    """Where the observed output keeps its rows in the result: the site's own row axis.

    The data lead with their rows; a site whose row axis is elsewhere gets
    its data with the rows moved there, when that gives the site's shape
    (otherwise the data are left out of the result).
    """
    info = next((o for o in fj.plan.outputs if o.name == name), None)
    if info is None or info.row_axis in (None, 0):
        return 0
    moved = (*shape[1 : info.row_axis + 1], shape[0], *shape[info.row_axis + 1 :])
    return int(info.row_axis) if moved == tuple(info.shape) else None


def _whole_rows(values: Any, n_rows: int) -> tuple[slice, ...]:
    axis = values.axis if isinstance(values, _RowsMoved) else 0
    return (*(slice(None),) * axis, slice(0, n_rows))


class _RowsMoved:
    """Observed data (rows first) seen with their rows on another axis, read by rows."""

    def __init__(self, values: Any, axis: int) -> None:
        self.values = values
        self.axis = axis
        full = tuple(int(n) for n in np.shape(values))
        self.shape = (*full[1 : axis + 1], full[0], *full[axis + 1 :])
        self.dtype = np.dtype(values.dtype)

    def rows(self, r0: int, r1: int) -> np.ndarray:
        """Rows ``r0:r1``, with the rows on :attr:`axis`."""
        return np.moveaxis(np.asarray(read_rows(self.values, r0, r1)), 0, self.axis)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.moveaxis(np.asarray(self.values), 0, self.axis)
        return out if dtype is None else out.astype(dtype)


def run_predictive(ctx: ModelContext, request: PredictiveRequest) -> xr.DataTree | dict[str, Any]:
    """Run a prior, posterior-predictive or log-likelihood request.

    In-memory requests (``*_on_batch``) run as one block into a
    :class:`MemorySink`; streamed ones run in blocks sized by the budget into
    the sink their ``store`` and ``output_dir`` choose.

    Args:
        ctx: The model's context.
        request: The request.
    """
    out = request.output
    progress = Progress(_label(request), out.progress and not out.in_memory)
    try:
        fj, blocks = _prepare(ctx, request, progress)
    except BaseException:
        progress.close()
        raise
    job = fj.job
    # the step size chosen with the blocks
    job.program = dataclasses.replace(job.program, cells_per_step=blocks.step_cells)  # type: ignore[type-var]
    logger.debug(
        "%s: blocks of %d draws x %d rows, %d draw-row cells per step",
        request.method,
        blocks.draw_block,
        blocks.row_block,
        blocks.step_cells,
    )
    group = _group(request)
    layouts = _layouts(fj, group, blocks)
    observed = (
        None if (out.in_memory and not out.return_datatree) else _observed(ctx, request, fj, blocks)
    )
    if observed is not None:
        layouts.append(observed[1])
    static = None
    if request.posterior is not None:
        static = {schema.POSTERIOR: request.posterior.by_chain()}
    client = cluster_of(out)
    attrs = result_attrs(
        job, {"method": request.method, **_call_attrs(request, blocks, fj)}, client
    )
    axes = job.program.outputs

    def consumer(submit: Submit | None) -> Consume:
        assert submit is not None
        forward = forward_consumer(axes, group, submit)

        def consume(block: Block, outputs: dict[str, Any]) -> None:
            forward(block, outputs)
            if observed is not None and block.d0 == 0:
                values, layout = observed
                if isinstance(values, _RowsMoved):
                    index = (*(slice(None),) * values.axis, slice(block.r0, block.r1))
                    piece = values.rows(block.r0, block.r1)
                else:
                    index = (slice(block.r0, block.r1),)
                    piece = np.asarray(read_rows(values, block.r0, block.r1))
                submit(layout.group, layout.name, index, piece)

        return consume

    delivery = Delivery(
        output=out,
        temp_folder=ctx.temp_folder,
        label=_label(request),
        folder=_label(request),
        group=group,
        layouts=layouts,
        static=static,
        attrs=attrs,
        total=job.n_rows * job.n_draws,
        progress_of=lambda rows, draws: rows * draws,
        consumer=consumer,
        driver_writes=[]
        if observed is None
        else [(observed[1], _whole_rows(observed[0], job.n_rows), np.asarray(observed[0]))],
    )
    tree = execute(job, blocks, delivery, client=client, progress=progress)
    if out.in_memory and not out.return_datatree:
        ds = tree[group].to_dataset()
        return {
            str(name): np.asarray(ds[name].values).reshape(-1, *ds[name].shape[2:])
            for name in ds.data_vars
        }
    return tree  # type: ignore[no-any-return]


def _prepare(
    ctx: ModelContext, request: PredictiveRequest, progress: Progress
) -> tuple[ForwardJob, BlockPlan]:
    """Plan the call and size its blocks (compiling its program), saying so as it goes."""
    out = request.output

    def sized(fj: ForwardJob) -> BlockPlan:
        return size_blocks(
            fj.job,
            _footprint(fj, out),
            chains=fj.chains,
            batch_size=out.batch_size,
            config=out.config,
            cache=ctx.sizes,
            announce=progress.stage,
        )

    progress.stage("tracing the kernel")
    fj = forward_job(ctx, request)
    blocks = sized(fj)
    if not fj.plan.split_checked and splits_rows(fj.job, blocks.row_block):
        # rows are about to be split: first make sure the kernel allows it
        progress.stage("checking that the kernel's rows may be split")
        checked = forward_job(ctx, request, check_split=True, bound=fj.bound)
        if checked.plan.path != fj.plan.path:
            fj, blocks = checked, sized(checked)
    if out.in_memory:
        progress.stage(f"running one block of {blocks.draw_block} draws x {blocks.row_block} rows")
    return fj, blocks


def _label(request: PredictiveRequest) -> str:
    return {PRIOR: "prior_predictive", LOG_LIKELIHOOD: "log_likelihood"}.get(
        request.kind, "predict"
    )


def _call_attrs(request: PredictiveRequest, blocks: BlockPlan, fj: ForwardJob) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "shard_axis": request.shard_axis,
        "batch_size": int(blocks.row_block),
        "path": fj.plan.path if fj.job.split_rows else FULL,
    }
    if request.kind not in (PRIOR, LOG_LIKELIHOOD):
        attrs["in_sample"] = int(request.in_sample)
        attrs["intervention"] = repr(sorted((request.intervention or {}).keys()))
    return attrs
