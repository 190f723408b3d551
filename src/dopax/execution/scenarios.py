"""``compare_scenarios`` on the engine: every scenario on each block, reduced on the fly.

The comparison is a block job like any forward pass: the scenario reducer
(:class:`~dopax.effects.scenarios.ScenarioProgram`) over every scenario's
inputs, built by :func:`~dopax.execution.job.build_job` and run by the
executor (:func:`~dopax.execution.executor.execute`) with blocks from the same
sizing policy, split across every local device or run on a Dask cluster.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from dopax._warn import warn
from dopax.data.finite import check_finite
from dopax.effects.reduce import EffectAccumulator, block_summary
from dopax.effects.result import EffectResult
from dopax.effects.scenarios import ScenarioProgram, group_codes
from dopax.effects.tree import effect_tree
from dopax.exceptions import ScenarioError
from dopax.execution.context import ModelContext
from dopax.execution.delivery import Delivery
from dopax.execution.executor import cluster_of, execute, result_attrs
from dopax.execution.job import PassInputs, PlannedPass, build_job, row_latent_plan
from dopax.execution.request import ScenarioRequest
from dopax.execution.runner import (
    Block,
    JobInputs,
    lower_block,
    row_latent_bytes,
    splits_rows,
)
from dopax.execution.sizing import Footprint, size_blocks, widen_steps
from dopax.kernel.signature import kernel_parameters
from dopax.output import schema
from dopax.output.build import tree_from_nodes
from dopax.output.schema import SiteLayout
from dopax.parallel.batching import BlockPlan
from dopax.parallel.sharded import OBS
from dopax.sampling.forward import PREDICT, PassSpec
from dopax.sampling.plan import ForwardPlan
from dopax.sampling.prepare import BoundArgs
from dopax.streaming.memory import map_large_allocations, release_free_memory
from dopax.streaming.stream import Progress, Submit

__all__ = ["run_scenarios"]

_INTERVENTION = "intervention"


def _bind_scenario(
    ctx: ModelContext, name: str, spec: Any, request: ScenarioRequest, n_rows: int
) -> tuple[BoundArgs, Any]:
    if not isinstance(spec, Mapping):
        raise ScenarioError(
            f"Scenario {name!r} must be a dict of kernel inputs to override and/or "
            f"'intervention'; got {type(spec).__name__}."
        )
    params = set(kernel_parameters(ctx.kernel)) - {ctx.param_output}
    overrides = {k: v for k, v in spec.items() if k != _INTERVENTION}
    unknown = sorted(set(overrides) - params - {"X"})
    if unknown:
        raise ScenarioError(
            f"Scenario {name!r} overrides unknown input(s) {unknown}; the kernel's inputs are "
            f"{sorted(params)}."
        )
    X_s = overrides.pop("X", overrides.pop(ctx.param_input, request.X))
    if X_s is not request.X:
        X_s = _per_row(X_s, request.X, n_rows)
    kwargs = request.kwargs
    for key, value in overrides.items():
        overrides[key] = _per_row(value, kwargs.get(key), n_rows)
    bound = ctx.bind(X_s, None, {**kwargs, **overrides}, request.output.config)
    if bound.n_rows != n_rows:
        raise ScenarioError(
            f"Scenario {name!r} has {bound.n_rows} rows of input but the call has {n_rows}."
        )
    for key in overrides:
        base_is_row = (
            key in kwargs and np.ndim(kwargs[key]) >= 1 and np.shape(kwargs[key])[0] == n_rows
        )
        if base_is_row and key not in bound.rows:
            raise ScenarioError(
                f"Scenario {name!r} gives {key!r} with shape {np.shape(overrides[key])}; it needs "
                f"one value per row ({n_rows}) like the base call."
            )
    return bound, spec.get(_INTERVENTION)


def _per_row(value: Any, base: Any, n_rows: int) -> Any:
    """Broadcast a scalar scenario value like the base call's argument (to every row).

    With a base array (the row-indexed input itself, a per-row or a shared
    argument), the scalar takes its shape and dtype; without one, one value
    per row.
    """
    if np.ndim(value) != 0 or isinstance(value, str | bytes) or value is None:
        return value
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        return value
    if base is not None and hasattr(base, "shape") and hasattr(base, "dtype"):
        return np.broadcast_to(arr.astype(np.dtype(base.dtype)), tuple(base.shape))
    return np.broadcast_to(
        arr.astype(np.float32 if arr.dtype.kind == "f" else arr.dtype), (n_rows,)
    )


@dataclasses.dataclass
class _Planned:
    """The scenarios of a call (names, inputs, plans), and the pass their blocks share.

    The shared pass has the first scenario's per-row latent sites, and rows
    that may be split only if every scenario's may.
    """

    names: list[str]
    passes: list[PassInputs]
    plans: list[ForwardPlan]
    shared: PlannedPass


def _scenarios(
    ctx: ModelContext,
    request: ScenarioRequest,
    base: BoundArgs,
    site: str,
    check_split: bool = False,
) -> _Planned:
    draws = dict(request.posterior.draws)
    names, passes, plans = [], [], []
    latent: dict[str, Any] = {}
    sources: dict[str, Any] = {}
    split_rows = True
    for name, spec_in in request.scenarios.items():
        bound, intervention = _bind_scenario(ctx, name, spec_in, request, base.n_rows)
        if bound.static != base.static:
            raise ScenarioError(
                f"Scenario {name!r} changes a non-array input; scenario overrides must be arrays."
            )
        spec = PassSpec(ctx.kernel, bound.static, (site,), PREDICT)
        try:
            planned = row_latent_plan(
                ctx,
                spec,
                bound,
                request.posterior,
                draws,
                intervention,
                in_sample=True,
                shard_axis=OBS,
                strict_sites=True,
                check_split=check_split,
                warn_full=False,
            )
        except KeyError as err:
            raise ScenarioError(str(err.args[0])) from err
        plan, latent, sources = planned.plan, planned.latent, planned.row_sources
        split_rows = split_rows and planned.split_rows
        names.append(name)
        passes.append(PassInputs.of(bound, plan, intervention))
        plans.append(plan)
    return _Planned(names, passes, plans, PlannedPass(plans[0], latent, sources, split_rows))


def _check_finite(planned: _Planned, n_rows: int) -> None:
    """Refuse NaN or Inf in any scenario's per-row inputs (each array checked once)."""
    seen: set[int] = set()
    for name, inputs in zip(planned.names, planned.passes, strict=True):
        fresh = {k: v for k, v in inputs.rows.items() if id(v) not in seen}
        seen.update(id(v) for v in fresh.values())
        check_finite(fresh, n_rows, f"compare_scenarios, scenario {name!r}")


def _job_inputs(passes: list[PassInputs], codes: np.ndarray, n_rows: int) -> JobInputs:
    """The inputs of a scenario comparison's blocks, laid out as its program takes them."""
    return JobInputs(
        rows={"scenarios": tuple(p.rows for p in passes), "codes": codes},
        row_do=tuple(p.row_do for p in passes),
        shared={
            "scenarios": tuple(p.shared for p in passes),
            "n_rows": np.asarray(n_rows, np.int64),
        },
        shared_do=tuple(p.shared_do for p in passes),
        anchor=tuple(p.anchor for p in passes),
        anchor_do=tuple(p.anchor_do for p in passes),
    )


def _check(request: ScenarioRequest) -> None:
    if not isinstance(request.scenarios, Mapping) or len(request.scenarios) < 2:
        raise ScenarioError("`scenarios` must be a dict of at least two named scenarios.")
    if request.baseline not in request.scenarios:
        raise ScenarioError(
            f"`baseline` {request.baseline!r} is not among the scenarios "
            f"{sorted(request.scenarios)}."
        )
    if not 0.0 < request.interval < 1.0:
        raise ValueError(f"`interval` must lie in (0, 1); got {request.interval!r}.")


def run_scenarios(ctx: ModelContext, request: ScenarioRequest) -> EffectResult:
    """Evaluate every scenario on each block of rows and reduce on the fly.

    Args:
        ctx: The model's context.
        request: The request.
    """
    _check(request)
    progress = Progress("compare_scenarios", request.output.progress, unit="row")
    try:
        return _run(ctx, request, progress)
    finally:
        progress.close()


def _run(ctx: ModelContext, request: ScenarioRequest, progress: Progress) -> EffectResult:
    progress.stage("tracing the kernel")
    base = ctx.bind(request.X, None, request.kwargs, request.output.config)
    ctx.ensure_spec(base, fitting=False)
    n_rows = base.n_rows
    codes, labels = group_codes(request.by, n_rows)
    site = request.site or ctx.param_output
    planned = _scenarios(ctx, request, base, site)
    plans = planned.plans
    _check_finite(planned, n_rows)
    names = planned.names
    b_index = names.index(request.baseline)
    posterior = request.posterior
    cfg = request.output.config
    info = next(o for o in plans[0].outputs if o.name == site)
    program = ScenarioProgram(
        PassSpec(
            ctx.kernel,
            base.static,
            (site,),
            PREDICT,
            plans[0].global_latents,
            plans[0].row_latents,
            plans[0].row_intervention_axes,
        ),
        site,
        len(names),
        b_index,
        len(labels),
        request.keep_draws,
        cfg.min_cells_per_step,
        request.interval,
        info.row_axis or 0,
    )
    job = build_job(
        ctx,
        program,
        _job_inputs(planned.passes, codes, n_rows),
        key=request.key,
        config=cfg,
        posterior=posterior,
        planned=planned.shared,
        n_draws=posterior.num_draws,
        n_rows=n_rows,
        # the kernel's matrix products per row, as its probes counted them
        # (XLA's count of the whole program would take sorting and
        # transcendentals for matrix products)
        matmul_flops_per_cell=max(p.matmul_flops_per_row for p in plans),
    )
    if request.site is None and np.dtype(info.dtype).kind in "biu":
        _warn_discrete(ctx, site, info.dtype)
    kept_bytes = 0
    if request.keep_draws:
        if info.row_axis != 0:
            raise ScenarioError(
                f"`keep_draws` needs the outcome site {site!r} to lead with its row axis."
            )
        rest = int(np.prod(info.shape[1:], dtype=np.int64))
        kept_bytes = len(names) * rest * np.dtype(info.dtype).itemsize
    # per draw and row: every scenario's outcome, the contrasts, and the contrasts
    # again with the draws last (for the per-row intervals) and their selection
    footprint = Footprint(
        per_row=4 * (2 * len(names) + 1 + 2 * (len(names) - 1))
        + kept_bytes
        + row_latent_bytes(job),
        per_draw=0,
        alive=2,
        whole_draws=True,
        one_draw_steps=True,
        probe=False,
    )
    out = request.output

    def sized() -> BlockPlan:
        return size_blocks(
            job,
            footprint,
            chains=posterior.num_chains,
            batch_size=out.batch_size,
            config=cfg,
            cache=ctx.sizes,
        )

    blocks = sized()
    if not all(p.split_checked for p in plans) and splits_rows(job, blocks.row_block):
        # rows are about to be split: first make sure the kernel allows it
        progress.stage("checking that the kernel's rows may be split")
        planned = _scenarios(ctx, request, base, site, check_split=True)
        plans = planned.plans
        if not planned.shared.split_rows:
            job.split_rows = False
            blocks = sized()
    blocks = widen_steps(job, blocks, footprint, cfg, ctx.sizes)
    job.program = dataclasses.replace(program, cells_per_step=blocks.step_cells)
    acc = EffectAccumulator(len(names), posterior.num_draws, len(labels), n_rows, request.interval)
    client = cluster_of(out)
    # the effects record the cluster's workers as their devices
    attrs = result_attrs(job, {"baseline": request.baseline, "site": site}, client)
    kept_attrs = {
        **result_attrs(job, {"baseline": request.baseline, "site": site}),
        "method": "compare_scenarios",
        "scenarios": list(names),
    }

    def result(kept: xr.DataTree | None) -> EffectResult:
        tree = effect_tree(
            acc,
            names,
            b_index,
            codes,
            labels,
            request.by is not None,
            posterior.num_chains,
            n_rows,
            attrs,
        )
        if kept is not None:
            tree = _attach(tree, kept, site, names)
        return EffectResult(tree)

    chains = posterior.num_chains
    per_chain = posterior.num_draws // chains
    layouts = [
        SiteLayout(
            group=schema.PREDICTIONS,
            name=site,
            num_chains=chains,
            num_draws=per_chain,
            shape=(len(names), *info.shape),
            dtype=info.dtype,
            chunks=(1, per_chain, len(names), blocks.row_block, *info.shape[1:]),
        )
    ]
    delivery = Delivery(
        output=out,
        temp_folder=ctx.temp_folder,
        label="compare_scenarios",
        folder="scenarios",
        group=schema.PREDICTIONS,
        layouts=layouts,
        static={schema.POSTERIOR: posterior.by_chain()},
        attrs=kept_attrs,
        total=n_rows,
        progress_of=lambda rows, draws: rows,
        reduction=ScenarioBlocks(schema.PREDICTIONS, site),
        collect=acc.add_summaries,
        finish=result,  # a failure here removes the kept draws too
        stored=request.keep_draws,
    )
    if cfg.trim_memory:
        # Block outputs are read on the host (and kept draws written) in threads;
        # without a fixed mmap threshold glibc keeps such buffers in per-thread
        # heaps, which grow with every call.
        map_large_allocations(cfg.mmap_threshold_bytes)
    try:
        if client is None:
            progress.stage(
                f"compiling blocks of {blocks.draw_block} draws x {blocks.row_block} rows"
            )
            lower_block(
                job, job.program, blocks.draw_block, blocks.row_block, blocks.row_block
            ).compile()
        return execute(job, blocks, delivery, client=client, progress=progress)  # type: ignore[no-any-return]
    finally:
        if cfg.trim_memory:
            release_free_memory()


@dataclasses.dataclass(frozen=True)
class ScenarioBlocks:
    """A comparison's blocks: their kept draws are written, their reductions kept.

    Its block reduction (:class:`~dopax.execution.delivery.BlockReduction`),
    for blocks run here or in a cluster's tasks.

    Attributes:
        group: The result group of the kept draws.
        site: The outcome site (the kept draws' variable).
    """

    group: str
    site: str

    def write(self, block: Block, outputs: dict[str, Any], submit: Submit) -> None:
        """Hand the block's draws of every scenario (``(D, S, R, ...)``) to ``submit``."""
        index = (slice(block.d0, block.d1), slice(None), slice(block.r0, block.r1))
        submit(self.group, self.site, index, outputs.pop("draws"))

    def record(self, block: Block, outputs: dict[str, Any]) -> tuple[int, int, dict[str, Any]]:
        """Return the block's rows and its reductions, as host arrays."""
        outputs.pop("draws", None)
        return block.r0, block.r1, block_summary(outputs)


def _warn_discrete(ctx: ModelContext, site: str, dtype: str) -> None:
    """Say that per-row intervals of a discrete outcome hold whole numbers, and what to use."""
    expectations = [n for n in (ctx.spec.return_sites if ctx.spec else ()) if n != site]
    hint = (
        f"pass `site=` one of the kernel's deterministic sites {expectations} that holds the "
        "outcome's expectation (e.g. a probability or rate)"
        if expectations
        else "record the outcome's expectation as a deterministic site (e.g. "
        "`numpyro.deterministic('p', p)`) and pass `site='p'`"
    )
    warn(
        f"The outcome {site!r} is discrete ({dtype}): per draw, each row's contrast is a whole "
        "number, so the per-row intervals in `rows` are whole numbers too (often [0, 0] or "
        "[-1, 1]); the average effects and per-row means are not affected. For per-row "
        f"intervals of the expected effect, {hint}.",
        UserWarning,
    )


def _attach(tree: xr.DataTree, kept: xr.DataTree, site: str, names: list[str]) -> xr.DataTree:
    """Add the kept draws as the ``scenario_draws`` child, with a ``scenario`` dimension."""
    predictions = kept[schema.PREDICTIONS]
    assert isinstance(predictions, xr.DataTree)
    ds = predictions.to_dataset()
    ds = ds.rename({f"{site}_dim_0": schema.SCENARIO}).assign_coords(
        {schema.SCENARIO: np.asarray(names)}
    )
    draws = xr.DataTree(ds)
    draws.attrs.update(kept.attrs)
    children = {str(name): child.to_dataset() for name, child in tree.children.items()}
    return tree_from_nodes(
        {**children, schema.SCENARIO_DRAWS: draws}, {str(k): v for k, v in tree.attrs.items()}
    )
