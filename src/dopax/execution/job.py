"""From a request to a block job: bound inputs, the plan (cached), the per-row latent policy.

Every job is built here (:func:`build_job`): a forward pass from its request
(:func:`forward_job`), and a scenario comparison or a reduction from the
passes it plans.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dopax._warn import warn
from dopax.config import ExecutionConfig
from dopax.exceptions import KernelValidationError, ScenarioError
from dopax.execution.context import ModelContext
from dopax.execution.request import LOG_LIKELIHOOD, PredictiveRequest
from dopax.execution.runner import BlockJob, JobInputs
from dopax.inference.posterior import Posterior
from dopax.kernel.spec import observed_sites
from dopax.parallel.sharded import DRAW, OBS, BlockProgram
from dopax.sampling import forward
from dopax.sampling.explain import check_observed_shape
from dopax.sampling.forward import ForwardProgram, PassSpec
from dopax.sampling.plan import FULL, ForwardPlan, make_plan
from dopax.sampling.prepare import BoundArgs, anchor_rows
from dopax.sampling.row_latent import DRAWS

__all__ = [
    "ForwardJob",
    "PassInputs",
    "PlannedPass",
    "build_job",
    "forward_job",
    "kernel_params",
    "plan_pass",
    "return_sites",
    "row_latent_plan",
]


@dataclasses.dataclass
class ForwardJob:
    """A forward request made ready: the block job, its plan, its chains.

    Attributes:
        job: The block job.
        plan: The pass's plan (output shapes, path).
        chains: Number of chains of the draws.
        bound: The call's bound inputs.
    """

    job: BlockJob
    plan: ForwardPlan
    chains: int
    bound: BoundArgs


@dataclasses.dataclass(frozen=True)
class PlannedPass:
    """A pass's plan with its per-row latent sites settled (:func:`row_latent_plan`).

    Attributes:
        plan: The pass's plan.
        latent: Global latent draws to substitute (per-row sites taken out).
        row_sources: Each per-row latent site's draws or guide parameters.
        split_rows: Whether the pass's rows may be split into blocks.
    """

    plan: ForwardPlan
    latent: dict[str, Any]
    row_sources: dict[str, Any]
    split_rows: bool


@dataclasses.dataclass(frozen=True)
class PassInputs:
    """One pass's inputs: kernel arguments and intervention values, per row or whole.

    Attributes:
        rows: Kernel arguments with one entry per row (full length).
        shared: Array kernel arguments used whole.
        row_do: Intervened sites with one value per row (rows first).
        shared_do: Intervened sites with one value for all rows.
    """

    rows: dict[str, Any]
    shared: dict[str, Any]
    row_do: dict[str, Any]
    shared_do: dict[str, Any]

    @classmethod
    def of(cls, bound: BoundArgs, plan: ForwardPlan, intervention: Any) -> PassInputs:
        """Return a pass's inputs: its bound arguments and its intervention, split as planned.

        Args:
            bound: The pass's bound inputs.
            plan: The pass's plan (which intervened sites follow the rows, on which axis).
            intervention: Site name to value, or ``None``.
        """
        do = _float32(intervention or {})
        row_names = set(plan.row_intervention_sites)
        axes = dict(plan.row_intervention_axes)
        return cls(
            rows=dict(bound.rows),
            shared=dict(bound.shared),
            row_do={
                k: np.moveaxis(np.asarray(v), axes[k], 0) if k in axes else v
                for k, v in do.items()
                if k in row_names
            },
            shared_do={k: v for k, v in do.items() if k not in row_names},
        )

    @property
    def anchor(self) -> dict[str, Any]:
        """The anchor row's arguments (row 0)."""
        return {k: anchor_rows(v) for k, v in self.rows.items()}

    @property
    def anchor_do(self) -> dict[str, Any]:
        """The anchor row's intervention values."""
        return {k: anchor_rows(v) for k, v in self.row_do.items()}

    def job_inputs(self) -> JobInputs:
        """The inputs of a forward pass's program: this pass's, as they are."""
        return JobInputs(
            self.rows, self.row_do, self.shared, self.shared_do, self.anchor, self.anchor_do
        )


def build_job(
    ctx: ModelContext,
    program: BlockProgram,
    inputs: JobInputs,
    *,
    key: jax.Array,
    config: ExecutionConfig,
    posterior: Posterior | None,
    planned: PlannedPass,
    n_draws: int,
    n_rows: int,
    shard_axis: str = OBS,
    row_offset: int = 0,
    matmul_flops_per_cell: float | None = None,
) -> BlockJob:
    """Return the block job of a planned call (the one place a :class:`BlockJob` is made).

    Args:
        ctx: The model's context.
        program: What each block computes.
        inputs: The blocks' inputs.
        key: The call's key.
        config: The call's execution settings.
        posterior: The call's posterior (its ``numpyro.param`` values and row
            key go with the job), or ``None``.
        planned: The call's planned pass: its per-row latent sites and
            their sources, the global latent values (leading flat draw
            axis), whether rows may be split.
        n_draws: Number of draws.
        n_rows: Number of rows.
        shard_axis: ``"obs"`` or ``"draw"``, as asked.
        row_offset: Global index of the job's first row.
        matmul_flops_per_cell: Flops of the program's matrix products per
            draw-row cell, when the kernel's probes counted them.
    """
    return BlockJob(
        program=program,
        call_key=key,
        latent=planned.latent,
        n_draws=n_draws,
        n_rows=n_rows,
        inputs=inputs,
        window_bytes=config.input_window_bytes,
        split_rows=planned.split_rows,
        shard_axis=shard_axis,
        row_offset=row_offset,
        matmul_flops_per_cell=matmul_flops_per_cell,
        params=kernel_params(ctx, posterior),
        row_latents=planned.plan.row_latents,
        row_sources=planned.row_sources,
        row_words=posterior.row_words if posterior is not None else None,
    )


def plan_pass(
    ctx: ModelContext,
    spec: PassSpec,
    bound: BoundArgs,
    latent: Mapping[str, Any],
    intervention: Any,
    *,
    strict_sites: bool = True,
    check_split: bool = False,
    row_guides: Mapping[str, tuple[str, Mapping[str, Any]]] | None = None,
) -> ForwardPlan:
    """Return the plan of a pass, from the model's cache when the inputs' shapes were seen.

    Args:
        ctx: The model's context.
        spec: The static pass description.
        bound: The call's bound inputs.
        latent: Latent values to substitute (leading draw axis).
        intervention: Site name to value, or ``None``.
        strict_sites: Raise for a return site the pass lacks (sites asked
            for by name); otherwise leave it out (the default sites).
        check_split: Whether the plan must say if rows may be split (the call
            splits them); otherwise that check waits for a call that does.
        row_guides: Per-row sites drawn from a guide's parameters: site to
            ``(kind, parameters by role)``.
    """
    guides = dict(row_guides or {})
    signature = (
        spec,
        strict_sites,
        bound.n_rows,
        tuple((k, v.shape[1:], str(v.dtype)) for k, v in sorted(bound.rows.items())),
        tuple((k, v.shape, str(v.dtype)) for k, v in sorted(bound.shared.items())),
        tuple((k, np.shape(v)[1:]) for k, v in sorted(latent.items())),
        tuple(
            (k, kind, tuple((r, np.shape(a)) for r, a in sorted(arrays.items())))
            for k, (kind, arrays) in sorted(guides.items())
        ),
        None
        if intervention is None
        else tuple((k, np.shape(v)) for k, v in sorted(dict(intervention).items())),
    )
    plan = ctx.plans.get(signature)
    if plan is None or (check_split and not plan.split_checked):
        try:
            plan = make_plan(
                spec,
                bound,
                latent=latent,
                intervention=intervention,
                strict_sites=strict_sites,
                check_split=check_split,
                row_guides=guides,
            )
        except (KeyError, ScenarioError):
            raise
        except Exception as err:
            ctx.reraise(err, bound)
            raise
        ctx.remember(ctx.plans, signature, plan)
    return plan  # type: ignore[no-any-return]


def return_sites(ctx: ModelContext, names: Any) -> tuple[str, ...]:
    """Return the sites a call asks for (the spec's return sites by default).

    A name no trace of the kernel has shown so far is passed on with a
    warning: it may exist only in a branch not traced yet (``y is None``);
    the pass itself then raises if it lacks the site too.

    Args:
        ctx: The model's context (its spec is set).
        names: A site name, a sequence of names, or ``None``.

    Raises:
        TypeError: If ``names`` is neither a name nor a sequence of names.
    """
    assert ctx.spec is not None
    if names is None:
        return ctx.spec.return_sites
    if isinstance(names, str):
        sites: tuple[Any, ...] = (names,)
    elif isinstance(names, Iterable) and not isinstance(names, bytes | Mapping):
        sites = tuple(names)
    else:
        sites = ()
    if not sites or not all(isinstance(n, str) for n in sites):
        raise TypeError(
            "`return_sites` must be a site name or a sequence of site names (e.g. "
            f"`return_sites=['y', 'mu']`); got {names!r}."
        )
    known = {*ctx.spec.sample_sites, *ctx.spec.return_sites}
    unseen = [n for n in sites if n not in known]
    if unseen:
        warn(
            f"Return site(s) {unseen} were not seen in any trace of the kernel so far "
            f"(known sites: {sorted(known)}); they are passed on, as they may exist only "
            "in a branch of the kernel not traced yet.",
            UserWarning,
        )
    return tuple(dict.fromkeys(sites))


def kernel_params(ctx: ModelContext, posterior: Posterior | None) -> dict[str, Any]:
    """Return the fitted values of the kernel's ``numpyro.param`` sites that go with ``posterior``.

    A prior call (no posterior) gets none: its ``numpyro.param`` sites take
    their initial values, as in NumPyro's ``Predictive`` without ``params``.

    Args:
        ctx: The model's context (its spec is set).
        posterior: The call's posterior, or ``None``.
    """
    if posterior is None or ctx.spec is None:
        return {}
    names = set(ctx.spec.param_sites)
    return {k: v for k, v in posterior.params.items() if k in names}


def _float32(values: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in values.items():
        arr = jnp.asarray(v) if isinstance(v, jax.Array) else np.asarray(v)
        out[k] = arr.astype(np.float32) if arr.dtype == np.float64 else arr
    return out


def _check_rows_fit(plan: ForwardPlan, sources: Mapping[str, Any], n_rows: int) -> None:
    """Raise unless every per-row latent's values have the call's rows along their row axis."""
    for spec in plan.row_latents:
        source = sources[spec.name]
        if spec.kind == DRAWS:
            shape = tuple(np.shape(source))
            axis = 1 + spec.row_axis
        else:
            shape = tuple(np.shape(source["loc"]))
            axis = spec.row_axis
        if len(shape) <= axis or shape[axis] != n_rows:
            what = "posterior draws" if spec.kind == DRAWS else "guide parameters"
            raise ValueError(
                f"Per-row latent site {spec.name!r} has {what} of shape {shape}, which do "
                f"not fit {n_rows} rows. In-sample calls need the training rows; pass "
                "`in_sample=False` to draw fresh per-row latents for new rows."
            )


def row_latent_plan(
    ctx: ModelContext,
    base: PassSpec,
    bound: BoundArgs,
    posterior: Posterior | None,
    draws: dict[str, Any],
    intervention: Any,
    *,
    in_sample: bool,
    shard_axis: str,
    strict_sites: bool,
    check_split: bool,
    warn_full: bool = True,
) -> PlannedPass:
    """Plan a pass, deciding what to do with the posterior's per-row latent sites.

    In-sample calls keep them: each block carries its own rows' values (from
    the draws, or drawn from a guide that factorises over rows), and rows are
    split as for any kernel. When the guide couples the rows of such a site,
    all rows run together (with a warning naming the guide). Out-of-sample
    calls draw them fresh for the new rows.

    Args:
        ctx: The model's context.
        base: The pass description.
        bound: The call's bound inputs.
        posterior: The call's posterior, or ``None``.
        draws: Latent draws to substitute (per-row sites among them).
        intervention: Site name to value, or ``None``.
        in_sample: Whether the rows are the training rows.
        shard_axis: The call's shard axis.
        strict_sites: Raise for a return site the pass lacks.
        check_split: Whether the plan must say if rows may be split.
        warn_full: Whether to warn when the kernel's rows run together.

    Returns:
        The planned pass.
    """
    names = set(ctx.spec.sample_sites) if ctx.spec is not None else set()
    guides: dict[str, tuple[str, dict[str, Any]]] = {}
    if posterior is not None:
        guides = {
            k: (g.kind, {r: np.asarray(a) for r, a in g.arrays(posterior.params).items()})
            for k, g in posterior.drawn_per_call().items()
            if k in names
        }

    def plan_with(lat: dict[str, Any], gds: dict[str, Any]) -> ForwardPlan:
        return plan_pass(
            ctx,
            base,
            bound,
            lat,
            intervention,
            strict_sites=strict_sites,
            check_split=check_split,
            row_guides=gds,
        )

    plan = plan_with(draws, guides)
    split_rows = plan.path != FULL
    lost = sorted(set(guides) - set(plan.local_latents))
    if lost:
        raise ValueError(
            f"Site(s) {lost} are per-row latents of the fit's guide (drawn row by row from its "
            "parameters), but in this call they have no axis that follows the rows: call the "
            "kernel with inputs shaped like the data it was fitted on."
        )
    if plan.local_latents and not in_sample:
        draws = {k: v for k, v in draws.items() if k not in plan.local_latents}
        plan = plan_with(draws, {})
        split_rows = plan.path != FULL
    sources = {
        spec.name: draws[spec.name] if spec.kind == DRAWS else guides[spec.name][1]
        for spec in plan.row_latents
    }
    draws = {k: v for k, v in draws.items() if k not in sources}
    if plan.row_latents:
        _check_rows_fit(plan, sources, bound.n_rows)
    coupled = {
        k: g for k, g in (posterior.coupled_by() if posterior else {}).items() if k in sources
    }
    quiet = shard_axis == DRAW  # asking to split draws is asking for exactly this
    if coupled and split_rows:
        split_rows = False
        if not quiet:
            by = ", ".join(f"{site!r} ({guide})" for site, guide in sorted(coupled.items()))
            warn(
                f"The guide couples the rows of per-row latent site(s) {by}: all rows are "
                "processed together and only draws are split across batches and devices. "
                "Guides that factorise over rows (AutoNormal, AutoDelta, or an AutoGuideList "
                "of them for those sites) stream by rows.",
                UserWarning,
            )
    elif plan.path == FULL and warn_full and not (quiet and plan.row_latents):
        warn(
            f"{plan.reason}: rows are processed together and only draws are split across "
            "batches and devices.",
            UserWarning,
        )
    return PlannedPass(plan, draws, sources, split_rows)


def forward_job(
    ctx: ModelContext,
    request: PredictiveRequest,
    *,
    check_split: bool = False,
    bound: BoundArgs | None = None,
) -> ForwardJob:
    """Turn a forward request into a block job.

    Args:
        ctx: The model's context.
        request: The request.
        check_split: Whether to settle, by running the kernel split, if rows
            may be split (needed before a call splits them).
        bound: The request's bound inputs, when they were bound already.
    """
    if request.shard_axis not in (OBS, DRAW):
        raise ValueError(f"`shard_axis` must be 'obs' or 'draw'; got {request.shard_axis!r}.")
    if bound is None:
        bound = ctx.bind(request.X, request.y, request.kwargs, request.output.config)
    ctx.ensure_spec(bound, fitting=False)
    assert ctx.spec is not None
    if request.kind == LOG_LIKELIHOOD:
        if ctx.param_output not in bound.rows:
            raise ValueError(
                f"`{request.method}` needs the observed output: pass `y` with one entry per "
                f"row of `X` ({bound.n_rows} rows), e.g. `model.{request.method}(X, y)`, or an "
                f"ArrayLoader with the field {ctx.param_output!r}."
            )
        traced = ctx.probe(bound)
        check_observed_shape(traced, ctx.param_output, bound.rows[ctx.param_output], bound.n_rows)
        sites = observed_sites(traced)
        kind = forward.LOG_LIKELIHOOD
    else:
        sites = return_sites(ctx, request.return_sites)
        kind = forward.PREDICT
    posterior = request.posterior
    # Only latent sample sites (and ``numpyro.param`` sites given per draw) are
    # substituted: deterministic sites are recomputed (as numpyro's Predictive does
    # by default) and unknown names are ignored.
    latent_names = {*ctx.spec.sample_sites, *ctx.spec.param_sites}
    draws = {k: v for k, v in (posterior.draws if posterior else {}).items() if k in latent_names}
    base = PassSpec(ctx.kernel, bound.static, sites, kind)
    planned = row_latent_plan(
        ctx,
        base,
        bound,
        posterior,
        draws,
        request.intervention,
        in_sample=request.in_sample,
        shard_axis=request.shard_axis,
        strict_sites=request.return_sites is not None,
        check_split=check_split,
    )
    plan, draws, sources = planned.plan, planned.latent, planned.row_sources
    sites = tuple(info.name for info in plan.outputs)
    if kind == forward.PREDICT and request.return_sites is None and ctx.param_output not in sites:
        raise KernelValidationError(
            f"The kernel has no site {ctx.param_output!r} when it runs without its output "
            f"(`{ctx.param_output}=None`), so there is nothing to predict: sample the output "
            f"in every branch, e.g. `numpyro.sample({ctx.param_output!r}, dist, "
            f"obs={ctx.param_output})`, which draws it when `{ctx.param_output}` is None."
        )
    spec = PassSpec(
        ctx.kernel,
        bound.static,
        sites,
        kind,
        plan.global_latents,
        plan.row_latents,
        plan.row_intervention_axes,
    )
    if request.num_samples is not None:
        n_draws = request.num_samples
    elif draws:
        n_draws = next(iter(draws.values())).shape[0]
    else:
        n_draws = posterior.num_draws if posterior is not None and sources else 1
    program = ForwardProgram(
        spec,
        tuple(info.row_axis for info in plan.outputs),
        request.output.config.min_cells_per_step,
        tuple(len(info.shape) for info in plan.outputs),
    )
    job = build_job(
        ctx,
        program,
        PassInputs.of(bound, plan, request.intervention).job_inputs(),
        key=request.key,
        config=request.output.config,
        posterior=posterior,
        planned=planned,
        n_draws=n_draws,
        n_rows=bound.n_rows,
        shard_axis=request.shard_axis,
        row_offset=int(request.row_offset),
        matmul_flops_per_cell=plan.matmul_flops_per_row,
    )
    chains = posterior.num_chains if posterior is not None else 1
    return ForwardJob(job, plan, chains, bound)
