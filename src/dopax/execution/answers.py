"""``summarize`` and ``loo`` on the engine: forward passes reduced inside their block program.

A reduction is a block job like any forward pass: the forward request is
planned as :func:`~dopax.execution.job.forward_job` plans it, its program is
wrapped in a reducing block program (:class:`~dopax.answers.summary.SummaryProgram`
or :class:`~dopax.answers.loo.LooProgram`), blocks hold every draw of their
rows and are sized by the same policy, and the executor runs them on every
local device or as tasks on the call's Dask cluster. Only per-row results
leave a block; they are written row-chunked into a result with a ``summary``
(or ``loo``) group, and the driver keeps a few numbers per block (the
coverage count, the ``loo`` totals), taken in block order wherever the block
ran.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import xarray as xr

from dopax._warn import warn
from dopax.answers.loo import (
    LOO_GROUP,
    BlockTotals,
    LooProgram,
    LooTotals,
    block_totals,
    elpd_data,
    good_k,
)
from dopax.answers.summary import COVERED, SiteSummary, SummaryProgram
from dopax.execution.context import ModelContext
from dopax.execution.delivery import Delivery
from dopax.execution.executor import cluster_of, execute, result_attrs
from dopax.execution.job import ForwardJob, forward_job
from dopax.execution.request import LooRequest, PredictiveRequest, SummaryRequest
from dopax.execution.runner import Block, BlockJob, row_latent_bytes, splits_rows
from dopax.execution.sizing import Footprint, size_blocks
from dopax.output import schema
from dopax.output.schema import SiteLayout
from dopax.parallel.batching import BlockPlan
from dopax.streaming.stream import Progress, Submit

__all__ = ["run_loo", "run_summary"]

#: Copies of a block's draws a reducing program holds at once (the draws, their
#: transpose with the draws last, the selection's workspace).
_COPIES = 3


@dataclasses.dataclass
class _Reduction:
    """A planned reduction: its forward job, wrapped job and blocks."""

    forward: ForwardJob
    job: BlockJob
    blocks: BlockPlan


def _site_bytes(fj: ForwardJob) -> int:
    """Bytes per draw and row of the forward pass's outputs, as float32 at least."""
    total = 0
    for info in fj.plan.outputs:
        if info.row_axis is not None:
            rest = [s for i, s in enumerate(info.shape) if i != info.row_axis]
            total += int(np.prod(rest, dtype=np.int64)) * max(np.dtype(info.dtype).itemsize, 4)
    return total


def _plan(
    ctx: ModelContext,
    request: PredictiveRequest,
    wrap: Callable[[ForwardJob], BlockJob],
    progress: Progress,
) -> _Reduction:
    """Plan the forward pass, wrap its program, size blocks of every draw (checking splits)."""
    cfg = request.output.config

    def sized(fj: ForwardJob, job: BlockJob) -> BlockPlan:
        flops = job.matmul_flops_per_cell
        one_draw = (
            jax.default_backend() == "cpu"
            and flops is not None
            and flops >= cfg.matmul_flops_per_cell
        )
        footprint = Footprint(
            # the block's draws (and their copies), and its slice of per-row latent draws
            per_row=_COPIES * _site_bytes(fj) + row_latent_bytes(job),
            per_draw=0,
            alive=2,
            whole_draws=True,
            one_draw_steps=one_draw,
            probe=False,
        )
        return size_blocks(
            job,
            footprint,
            chains=fj.chains,
            batch_size=request.output.batch_size,
            config=cfg,
            cache=ctx.sizes,
        )

    progress.stage("tracing the kernel")
    fj = forward_job(ctx, request)
    job = wrap(fj)
    blocks = sized(fj, job)
    if not fj.plan.split_checked and splits_rows(job, blocks.row_block):
        progress.stage("checking that the kernel's rows may be split")
        checked = forward_job(ctx, request, check_split=True, bound=fj.bound)
        if checked.plan.path != fj.plan.path:
            fj = checked
            job = wrap(fj)
            blocks = sized(fj, job)
    job.program = job.program.with_step(blocks.step_cells)  # type: ignore[attr-defined]
    return _Reduction(fj, job, blocks)


def _index(row_axis: int | None, ndim: int, block: Block) -> tuple[slice, ...] | None:
    """Where a per-row output block goes (``None``: a row-less output already written)."""
    if row_axis is None:
        return (slice(None),) * min(ndim, 1) if block.r0 == 0 else None
    return (*(slice(None),) * row_axis, slice(block.r0, block.r1))


def _layout(
    group: str, name: str, site: str, shape: tuple[int, ...], row_axis: int | None, rows: int
) -> SiteLayout:
    chunks = list(shape)
    if row_axis is not None:
        chunks[row_axis] = max(1, min(rows, shape[row_axis]))
    return SiteLayout(
        group=group,
        name=name,
        num_chains=1,
        num_draws=1,
        shape=tuple(shape),
        dtype="<f4",
        chunks=tuple(max(c, 1) for c in chunks),
        dim_names=schema.site_dims(site, len(shape))[2:],
    )


@dataclasses.dataclass(frozen=True)
class RowResults:
    """A reduction's blocks: their per-row results written, a small record kept.

    The block reduction (:class:`~dopax.execution.delivery.BlockReduction`)
    of ``summarize`` and ``loo``, for blocks run here or in a cluster's
    tasks. Subclasses say what the driver keeps of a block.

    Attributes:
        group: The result group.
        written: The stored outputs, as ``(name, ndim, row_axis)``.
    """

    group: str
    written: tuple[tuple[str, int, int | None], ...]

    def write(self, block: Block, outputs: dict[str, Any], submit: Submit) -> None:
        """Hand the block's per-row results to ``submit``."""
        for name, ndim, axis in self.written:
            index = _index(axis, ndim, block)
            if index is not None:
                submit(self.group, name, index, outputs[name])

    def record(self, block: Block, outputs: dict[str, Any]) -> Any:
        """Return what the driver keeps of the block."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class SummaryBlocks(RowResults):
    """A ``summarize`` call's blocks: the driver keeps how many observed values each covers."""

    def record(self, block: Block, outputs: dict[str, Any]) -> int:
        """Return the block's observed values inside their intervals (0 without ``y``)."""
        return int(np.asarray(outputs[COVERED])) if COVERED in outputs else 0


@dataclasses.dataclass(frozen=True)
class LooBlocks(RowResults):
    """A ``loo`` call's blocks: the driver keeps each block's share of the totals.

    Attributes:
        threshold: Pareto ``k`` above which a row counts as unreliable.
    """

    threshold: float

    def record(self, block: Block, outputs: dict[str, Any]) -> BlockTotals:
        """Return the block's :func:`~dopax.answers.loo.block_totals`."""
        return block_totals(
            outputs["loo_i"], outputs["pareto_k"], outputs["lppd_i"], self.threshold
        )


def _stream(
    ctx: ModelContext,
    request: PredictiveRequest,
    plan: _Reduction,
    reduction: RowResults,
    layouts: list[SiteLayout],
    collect: Callable[[list[Any]], None],
    attrs: dict[str, Any],
    late_attrs: Callable[[], Mapping[str, Any]],
    progress: Progress,
    label: str,
) -> xr.DataTree:
    """Run the blocks here or on the call's cluster; write and keep what ``reduction`` says."""
    out = request.output
    job, blocks = plan.job, plan.blocks
    client = cluster_of(out)
    delivery = Delivery(
        output=out,
        temp_folder=ctx.temp_folder,
        label=label,
        folder=label,
        group=reduction.group,
        layouts=layouts,
        static=None,
        attrs=result_attrs(job, attrs, client),
        total=job.n_rows,
        progress_of=lambda rows, draws: rows,
        reduction=reduction,
        collect=collect,
        late_attrs=late_attrs,
    )
    return execute(job, blocks, delivery, client=client, progress=progress)  # type: ignore[no-any-return]


def _written(
    group: str, written: Mapping[str, tuple[str, tuple[int, ...], int | None]], rows: int
) -> tuple[tuple[tuple[str, int, int | None], ...], list[SiteLayout]]:
    """Return a reduction's stored outputs and their layouts.

    Args:
        group: The result group.
        written: Each stored output's site, shape and row axis, by name.
        rows: Rows per block (the chunk along the row axis).
    """
    stored = tuple((name, len(shape), axis) for name, (_, shape, axis) in written.items())
    layouts = [
        _layout(group, name, site, shape, axis, rows)
        for name, (site, shape, axis) in written.items()
    ]
    return stored, layouts


def _call_attrs(request: PredictiveRequest, plan: _Reduction, method: str) -> dict[str, Any]:
    return {
        "method": method,
        "batch_size": int(plan.blocks.row_block),
        "path": plan.forward.plan.path,
        "num_draws": int(plan.job.n_draws),
        "num_chains": int(plan.forward.chains),
    }


def _observed_rows(ctx: ModelContext, fj: ForwardJob, observed: Any) -> tuple[Any, SiteSummary]:
    """Check the observed output against the output site; return it (rows leading) and the site."""
    name = ctx.param_output
    info = next((o for o in fj.plan.outputs if o.name == name), None)
    if info is None:
        raise ValueError(
            f"`y` is given, but the output site {name!r} is not among the summarised sites "
            f"{[o.name for o in fj.plan.outputs]}; add it to `return_sites`."
        )
    values = np.asarray(observed) if not hasattr(observed, "shape") else observed
    axis = 0 if info.row_axis is None else info.row_axis
    want = (info.shape[axis], *(s for i, s in enumerate(info.shape) if i != axis))
    if info.row_axis is None or tuple(np.shape(values)) != tuple(want):
        raise ValueError(
            f"`y` must hold the observed {name!r} with one entry per row: shape {want} "
            f"(the site's shape {tuple(info.shape)} with rows first); got "
            f"{tuple(np.shape(values))}."
        )
    discrete = np.dtype(info.dtype).kind in "biu"
    return values, SiteSummary(name, info.row_axis, discrete)


def run_summary(ctx: ModelContext, request: SummaryRequest) -> xr.DataTree:
    """Run a ``summarize`` request; return the result with its ``summary`` group.

    Args:
        ctx: The model's context.
        request: The request.
    """
    fwd = request.forward
    progress = Progress("summarize", fwd.output.progress, unit="row")
    observed: dict[str, Any] = {}

    def wrap(fj: ForwardJob) -> BlockJob:
        sites = tuple(
            SiteSummary(o.name, o.row_axis, np.dtype(o.dtype).kind in "biu")
            for o in fj.plan.outputs
        )
        obs_name = None
        if request.observed is not None:
            values, site = _observed_rows(ctx, fj, request.observed)
            sites = tuple(site if s.name == site.name else s for s in sites)
            obs_name = site.name
            observed["values"], observed["site"] = values, site
        program = SummaryProgram(
            fj.job.program,  # type: ignore[arg-type]
            sites,
            fj.job.n_draws,
            request.prob,
            request.interval,
            request.quantiles,
            obs_name,
        )
        inputs = fj.job.inputs
        rows: dict[str, Any] = {"kernel": inputs.rows}
        if obs_name is not None:
            rows["observed"] = observed["values"]
        end = np.asarray(fj.job.row_offset + fj.job.n_rows, np.int64)
        shared = {"kernel": inputs.shared, "n_rows": end}
        return dataclasses.replace(
            fj.job, program=program, inputs=dataclasses.replace(inputs, rows=rows, shared=shared)
        )

    try:
        plan = _plan(ctx, fwd, wrap, progress)
        program = plan.job.program
        assert isinstance(program, SummaryProgram)
        shapes = {o.name: tuple(o.shape) for o in plan.forward.plan.outputs}
        written: dict[str, tuple[str, tuple[int, ...], int | None]] = {}
        site_of = {}
        for site in program.sites:
            for name in _names(program, site):
                written[name] = (site.name, shapes[site.name], site.row_axis)
                site_of[name] = site.name
        covered = [0]

        def collect(records: list[Any]) -> None:
            covered[0] += sum(records)

        def late() -> dict[str, Any]:
            if program.observed is None:
                return {}
            total = int(np.prod(shapes[program.observed], dtype=np.int64))
            return {"coverage": covered[0] / max(total, 1)}

        attrs = {
            **_call_attrs(fwd, plan, "summarize"),
            "prob": float(request.prob),
            "interval": request.interval,
            "quantiles": [float(q) for q in request.quantiles],
            "in_sample": int(fwd.in_sample),
            "intervention": repr(sorted((fwd.intervention or {}).keys())),
            # each site's dimension of rows (None: a site without rows)
            "row_dims": {
                s.name: None if s.row_axis is None else f"{s.name}_dim_{s.row_axis}"
                for s in program.sites
            },
        }
        if program.observed is not None:
            attrs["observed"] = program.observed
        stored, layouts = _written(schema.SUMMARY, written, plan.blocks.row_block)
        reduction = SummaryBlocks(schema.SUMMARY, stored)
        return _stream(
            ctx, fwd, plan, reduction, layouts, collect, attrs, late, progress, "summarize"
        )
    finally:
        progress.close()


def _names(program: SummaryProgram, site: SiteSummary) -> list[str]:
    from dopax.answers.summary import stat_names

    return stat_names(site.name, program.quantiles, site.name == program.observed)


def run_loo(ctx: ModelContext, request: LooRequest) -> Any:
    """Run a ``loo`` request; return ArviZ's ``ELPDData`` over the written result.

    Args:
        ctx: The model's context.
        request: The request.
    """
    fwd = request.forward
    progress = Progress("loo", fwd.output.progress, unit="row")
    reff = 1.0 if request.reff is None else float(request.reff)

    def wrap(fj: ForwardJob) -> BlockJob:
        name = ctx.param_output
        info = next((o for o in fj.plan.outputs if o.name == name), None)
        if info is None:
            raise ValueError(f"The kernel has no observed site {name!r} to compute `loo` for.")
        program = LooProgram(fj.job.program, name, info.row_axis, reff)  # type: ignore[arg-type]
        return dataclasses.replace(fj.job, program=program)

    try:
        plan = _plan(ctx, fwd, wrap, progress)
        name = ctx.param_output
        info = next(o for o in plan.forward.plan.outputs if o.name == name)
        shape = tuple(info.shape)
        written = {v: (name, shape, info.row_axis) for v in ("loo_i", "pareto_k")}
        totals = LooTotals(good_k(plan.job.n_draws))

        def collect(records: list[Any]) -> None:
            for record in records:
                totals.merge(record)

        attrs = {**_call_attrs(fwd, plan, "loo"), "site": name, "reff": reff}
        stored, layouts = _written(LOO_GROUP, written, plan.blocks.row_block)
        tree = _stream(
            ctx,
            fwd,
            plan,
            LooBlocks(LOO_GROUP, stored, totals.threshold),
            layouts,
            collect,
            attrs,
            lambda: totals.attrs(plan.job.n_draws),
            progress,
            "loo",
        )
    finally:
        progress.close()
    if totals.above:
        warn(
            f"{totals.above} of {totals.count} observations have an estimated Pareto k above "
            f"{totals.threshold:.2f} ({totals.above_07} above 0.7): their PSIS-LOO estimates "
            "are unreliable (the posterior changes much when they are left out). Look at them "
            "with `az.plot_khat`, and consider a more robust model or exact cross-validation "
            "for them.",
            UserWarning,
        )
    return elpd_data(tree)
