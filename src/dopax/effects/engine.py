"""Orchestration of :meth:`dopax.ImpactModel.compare_scenarios`."""

from __future__ import annotations

import collections
import os
import uuid
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp
import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from dopax.config import get_config
from dopax.effects.result import EffectResult
from dopax.effects.scenarios import Scenario, group_codes, scenario_block_fn
from dopax.exceptions import ScenarioError, StreamingError
from dopax.kernel.signature import kernel_parameters
from dopax.output import schema
from dopax.output.schema import SiteLayout, base_attrs
from dopax.parallel.batching import ceil_to
from dopax.parallel.sharded import pad_leading
from dopax.sampling.forward import PREDICT, PassSpec
from dopax.sampling.plan import FULL
from dopax.sampling.prepare import bind_args, read_rows
from dopax.streaming.pipeline import WriterPool

if TYPE_CHECKING:
    from dopax.model.impact_model import ImpactModel
    from dopax.model.state import Posterior

__all__ = ["run_comparison"]

_INTERVENTION = "intervention"


#: Threads taking per-row effect summaries on the host.
_HOST_THREADS = 2
#: Automatic scenario blocks hold a multiple of this many rows (the last block
#: is padded). XLA's CPU code for a W3 block took twice as long on an odd row
#: count: 4,473 rows per block ran 200,000 rows in 23 s, against 11 s with
#: 4,472, 4,476 or 4,480 (``BENCHMARKS.md``, W3).
ROW_MULTIPLE = 8


def _scenario(
    model: ImpactModel,
    name: str,
    spec: Any,
    X: Any,
    kwargs: Mapping[str, Any],
    n_rows: int,
) -> tuple[dict[str, Any], Any]:
    if not isinstance(spec, Mapping):
        raise ScenarioError(
            f"Scenario {name!r} must be a dict of kernel inputs to override and/or "
            f"'intervention'; got {type(spec).__name__}."
        )
    params = set(kernel_parameters(model.kernel)) - {model.param_output}
    overrides = {k: v for k, v in spec.items() if k != _INTERVENTION}
    unknown = sorted(set(overrides) - params - {"X"})
    if unknown:
        raise ScenarioError(
            f"Scenario {name!r} overrides unknown input(s) {unknown}; the kernel's inputs are "
            f"{sorted(params)}."
        )
    X_s = overrides.pop("X", overrides.pop(model.param_input, X))
    merged = {**kwargs, **overrides}
    bound = bind_args(model.param_input, X_s, model.param_output, None, merged)
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
    return {"bound": bound}, spec.get(_INTERVENTION)


def run_comparison(
    model: ImpactModel,
    posterior: Posterior,
    X: Any,
    scenarios: Mapping[str, Any],
    *,
    baseline: str,
    site: str | None,
    by: Any,
    interval: float,
    rng_key: Any,
    batch_size: int | None,
    progress: bool,
    kwargs: Mapping[str, Any],
    keep_draws: bool = False,
    store: str = "persistent",
    output_dir: Any = None,
) -> EffectResult:
    """Evaluate every scenario on each chunk of rows and reduce on the fly.

    Args:
        model: The fitted model.
        posterior: Its posterior.
        X: Base input.
        scenarios: Scenario name to overrides (see ``compare_scenarios``).
        baseline: Name of the baseline scenario.
        site: Outcome site (default: the output site).
        by: Per-row group labels, or ``None``.
        interval: Central interval probability of per-row contrasts.
        rng_key: Key for the call.
        batch_size: Rows per chunk, or ``None`` for automatic.
        progress: Whether to show a progress bar.
        kwargs: Base kernel keyword arguments.
        keep_draws: Also stream every scenario's draws of ``site`` (group
            ``predictions``, with a ``scenario`` dimension).
        store: Where kept draws go: ``"persistent"`` (Zarr) or ``"memory"``.
        output_dir: Base folder for the kept draws' new sub-folder.
    """
    if not isinstance(scenarios, Mapping) or len(scenarios) < 2:
        raise ScenarioError("`scenarios` must be a dict of at least two named scenarios.")
    if baseline not in scenarios:
        raise ScenarioError(
            f"`baseline` {baseline!r} is not among the scenarios {sorted(scenarios)}."
        )
    if not 0.0 < interval < 1.0:
        raise ValueError(f"`interval` must lie in (0, 1); got {interval!r}.")
    base = bind_args(model.param_input, X, model.param_output, None, kwargs)
    n_rows = base.n_rows
    codes, labels = group_codes(by, n_rows)
    site = site or model.param_output
    draws = dict(posterior.draws)
    names = list(scenarios)
    prepared = []
    for name in names:
        info, intervention = _scenario(model, name, scenarios[name], X, kwargs, n_rows)
        bound = info["bound"]
        if bound.static != base.static:
            raise ScenarioError(
                f"Scenario {name!r} changes a non-array input; scenario overrides must be arrays."
            )
        spec = PassSpec(model.kernel, bound.static, (site,), PREDICT)
        try:
            plan = model._plan(spec, bound, draws, intervention, None)
        except KeyError as err:
            raise ScenarioError(str(err.args[0])) from err
        prepared.append((name, bound, intervention, plan))
    full = any(p.path == FULL for *_, p in prepared)
    global_latents = prepared[0][3].global_latents
    spec = PassSpec(model.kernel, base.static, (site,), PREDICT, global_latents)
    scen_objs = []
    for name, bound, intervention, plan in prepared:
        row_names = set(plan.row_intervention_sites)
        do = {
            k: np.asarray(v, dtype=np.float32)
            if np.asarray(v).dtype == np.float64
            else np.asarray(v)
            for k, v in (intervention or {}).items()
        }
        scen_objs.append(
            Scenario(
                name=name,
                rows=dict(bound.rows),
                shared={k: jnp.asarray(v) for k, v in bound.shared.items()},
                row_do={k: v for k, v in do.items() if k in row_names},
                shared_do={k: jnp.asarray(v) for k, v in do.items() if k not in row_names},
            )
        )
    n_draws = posterior.num_draws
    n_s = len(names)
    b_index = names.index(baseline)
    cfg = get_config()
    per_row_bytes = n_draws * 4 * (2 * n_s + 1)
    if full:
        row_block = n_rows
    elif batch_size is not None:
        row_block = min(batch_size, n_rows)
    else:
        # Two blocks are alive at once (one computing, one whose intervals are
        # taken on the host), each with its differences and their quantile
        # workspace: a third of the budget per block.
        row_block = int(max(1, min(n_rows, cfg.memory_budget_bytes // 3 // per_row_bytes)))
        row_block = ceil_to(row_block, ROW_MULTIPLE)
    # Draws run one per step (a plain loop): W3's kernel measured faster this
    # way on CPU than vectorised over draws, and steps bound the temporaries.
    fn = scenario_block_fn(spec, site, n_s, b_index, len(labels), float(interval), True, keep_draws)
    kept = (
        _KeptDraws(model, posterior, site, names, prepared[0][3], row_block, store, output_dir)
        if keep_draws
        else None
    )
    key = model._key(rng_key)
    sums = np.zeros((n_s, n_draws), np.float64)
    group_sums = np.zeros((n_s, n_draws, len(labels)), np.float64)
    n_c = n_s - 1
    eff_mean = np.empty((n_c, n_rows), np.float32)
    eff_lo = np.empty((n_c, n_rows), np.float32)
    eff_hi = np.empty((n_c, n_rows), np.float32)
    latent = {k: jnp.asarray(v) for k, v in draws.items()}
    draw_idx = jnp.arange(n_draws, dtype=jnp.int32)
    anchors = tuple(
        {k: jnp.asarray(read_rows(v, 0, 1)) for k, v in s.rows.items()} for s in scen_objs
    )
    anchor_do = tuple(
        {k: jnp.asarray(read_rows(v, 0, 1)) for k, v in s.row_do.items()} for s in scen_objs
    )
    pending: list[tuple[int, int, dict[str, Any]]] = []

    def per_row(r0: int, r1: int, diffs_block: Any) -> None:
        diffs = np.asarray(diffs_block)[:, :, : r1 - r0]  # (D, C, R)
        eff_mean[:, r0:r1] = diffs.mean(axis=0)
        lo, hi = row_quantiles(diffs, ((1 - interval) / 2, (1 + interval) / 2))
        eff_lo[:, r0:r1] = lo
        eff_hi[:, r0:r1] = hi

    # Per-row means and intervals (a selection over draws for every row: the
    # largest host cost) run on worker threads, which NumPy lets run in
    # parallel with each other and with the device; at most two blocks wait.
    host = ThreadPoolExecutor(max_workers=_HOST_THREADS, thread_name_prefix="dopax-effects")
    host_jobs: collections.deque[Future[None]] = collections.deque()

    def collect(r0: int, r1: int, out: dict[str, Any]) -> None:
        if kept is not None:
            kept.write(r0, r1, out["draws"])
        sums[:] += np.asarray(out["sums"], np.float64)
        group_sums[:] += np.asarray(out["group_sums"], np.float64)
        while len(host_jobs) >= _HOST_THREADS:
            host_jobs.popleft().result()
        host_jobs.append(host.submit(per_row, r0, r1, out["diffs"]))

    if kept is not None:
        kept.open()
    try:
        with tqdm(total=n_rows, disable=not progress, desc="compare_scenarios", leave=False) as bar:
            for r0 in range(0, n_rows, row_block):
                r1 = min(r0 + row_block, n_rows)
                size = row_block
                mask = np.zeros(size, np.float32)
                mask[: r1 - r0] = 1.0
                args = (
                    key,
                    draw_idx,
                    jnp.asarray(r0, jnp.uint32),
                    latent,
                    tuple(
                        {k: pad_leading(read_rows(v, r0, r1), size) for k, v in s.rows.items()}
                        for s in scen_objs
                    ),
                    tuple(s.shared for s in scen_objs),
                    tuple(
                        {k: pad_leading(read_rows(v, r0, r1), size) for k, v in s.row_do.items()}
                        for s in scen_objs
                    ),
                    tuple(s.shared_do for s in scen_objs),
                    anchors,
                    anchor_do,
                    jnp.asarray(pad_leading(codes[r0:r1], size)),
                    jnp.asarray(mask),
                )
                out = fn(*args)
                pending.append((r0, r1, out))
                if len(pending) > 1:
                    collect(*pending.pop(0))
                bar.update(r1 - r0)
            for item in pending:
                collect(*item)
            while host_jobs:
                host_jobs.popleft().result()
    except BaseException:
        for job in host_jobs:
            job.cancel()
        host.shutdown(wait=True)
        if kept is not None:
            kept.abort()
        raise
    host.shutdown(wait=True)
    result = EffectResult(
        _effect_tree(
            names,
            b_index,
            sums,
            group_sums,
            codes,
            labels,
            by is not None,
            (eff_mean, eff_lo, eff_hi),
            posterior.num_chains,
            n_rows,
            site,
            interval,
        )
    )
    if kept is not None:
        result = EffectResult(_attach(result.tree, kept.close()))
    return result


def _attach(tree: xr.DataTree, draws: xr.DataTree) -> xr.DataTree:
    children = dict(tree.children)
    children["scenario_draws"] = draws
    out = xr.DataTree(children=children)
    out.attrs.update(tree.attrs)
    return out


class _KeptDraws:
    """Streams every scenario's draws of the outcome into a sink during the pass."""

    def __init__(
        self,
        model: ImpactModel,
        posterior: Posterior,
        site: str,
        names: list[str],
        plan: Any,
        row_block: int,
        store: str,
        output_dir: Any,
    ) -> None:
        from dopax.streaming.sinks import MemorySink, ZarrSink

        info = next(o for o in plan.outputs if o.name == site)
        if info.row_axis != 0:
            raise ScenarioError(
                f"`keep_draws` needs the outcome site {site!r} to lead with its row axis."
            )
        self.names = names
        self.site = site
        chains = posterior.num_chains
        per_chain = posterior.num_draws // chains
        self.layout = SiteLayout(
            group=schema.PREDICTIONS,
            name=site,
            num_chains=chains,
            num_draws=per_chain,
            shape=(len(names), *info.shape),
            dtype=info.dtype,
            chunks=(1, per_chain, len(names), row_block, *info.shape[1:]),
        )
        self.static = {
            schema.POSTERIOR: {
                k: np.asarray(v).reshape(chains, per_chain, *np.shape(v)[1:])
                for k, v in posterior.draws.items()
            }
        }
        self.keep: Any = None
        self.path: str | None = None
        self.sink: Any
        if store == "memory":
            self.sink = MemorySink()
        elif store == "persistent":
            if output_dir is None:
                self.keep = model._temp_folder()
                base = self.keep.path
            else:
                base = os.fspath(output_dir)
                os.makedirs(base, exist_ok=True)
            self.path = os.path.join(base, f"scenarios-{uuid.uuid4().hex[:12]}.zarr")
            self.sink = ZarrSink(self.path, keepalive=self.keep)
        else:
            raise ValueError(f"`store` must be 'persistent' or 'memory'; got {store!r}.")
        self.pool: WriterPool | None = None

    def open(self) -> None:
        cfg = get_config()
        attrs = base_attrs({"method": "compare_scenarios", "scenarios": list(self.names)})
        self.sink.open([self.layout], static=self.static, attrs=attrs)
        self.pool = WriterPool(
            self.sink,
            threads=cfg.writer_threads,
            depth=cfg.pipeline_depth,
            trim_memory=cfg.trim_memory,
        )
        self.pool.__enter__()

    def write(self, r0: int, r1: int, draws: Any) -> None:
        assert self.pool is not None
        index = (slice(0, int(draws.shape[0])), slice(None), slice(r0, r1))
        self.pool.submit(schema.PREDICTIONS, self.site, index, draws[:, :, : r1 - r0])

    def abort(self) -> None:
        if self.pool is not None:
            error = StreamingError("compare_scenarios was interrupted")
            self.pool.__exit__(StreamingError, error, None)
        self.sink.abort()

    def close(self) -> xr.DataTree:
        assert self.pool is not None
        self.pool.__exit__(None, None, None)
        tree = self.sink.close()
        predictions = tree[schema.PREDICTIONS]
        assert isinstance(predictions, xr.DataTree)
        ds = predictions.to_dataset()
        ds = ds.rename({f"{self.site}_dim_0": "scenario"}).assign_coords(
            scenario=np.asarray(self.names)
        )
        out = xr.DataTree(ds)
        out.attrs.update(tree.attrs)
        return out


def _effect_tree(
    names: list[str],
    b_index: int,
    sums: np.ndarray,
    group_sums: np.ndarray,
    codes: np.ndarray,
    labels: np.ndarray,
    grouped: bool,
    per_row: tuple[np.ndarray, np.ndarray, np.ndarray],
    chains: int,
    n_rows: int,
    site: str,
    interval: float,
) -> xr.DataTree:
    n_draws = sums.shape[1]
    shape = (chains, n_draws // chains)
    means = (sums / max(n_rows, 1)).T.reshape(*shape, len(names))
    others = [i for i in range(len(names)) if i != b_index]
    contrasts = [f"{names[i]} - {names[b_index]}" for i in others]
    ate = means[..., others] - means[..., [b_index]]
    relative = ate / means[..., [b_index]]
    coords = {
        "chain": np.arange(shape[0]),
        "draw": np.arange(shape[1]),
        "scenario": np.asarray(names),
        "contrast": np.asarray(contrasts),
    }
    draws = xr.Dataset(
        {
            "mean": (("chain", "draw", "scenario"), means),
            "ate": (("chain", "draw", "contrast"), ate),
            "relative": (("chain", "draw", "contrast"), relative),
        },
        coords={
            **coords,
            "contrast_scenario": ("contrast", np.asarray([names[i] for i in others])),
        },
    )
    children = {"draws": xr.DataTree(draws)}
    if grouped:
        counts = np.bincount(codes, minlength=len(labels)).astype(np.float64)
        g_means = group_sums / np.maximum(counts, 1.0)  # (S, D, G)
        g_means = np.moveaxis(g_means, 0, 1).reshape(*shape, len(names), len(labels))
        g_ate = g_means[:, :, others, :] - g_means[:, :, [b_index], :]
        children["by_group"] = xr.DataTree(
            xr.Dataset(
                {
                    "mean": (("chain", "draw", "scenario", "group"), g_means),
                    "ate": (("chain", "draw", "contrast", "group"), g_ate),
                },
                coords={**coords, "group": labels},
            )
        )
    mean, lo, hi = per_row
    rows = xr.Dataset(
        {
            "effect_mean": (("contrast", "row"), mean),
            "effect_lower": (("contrast", "row"), lo),
            "effect_upper": (("contrast", "row"), hi),
        },
        coords={"contrast": np.asarray(contrasts), "row": np.arange(n_rows)},
        attrs={"interval_prob": interval},
    )
    children["rows"] = xr.DataTree(rows)
    tree = xr.DataTree(children=children)
    tree.attrs.update(base_attrs({"baseline": names[b_index], "site": site}))
    return tree


def row_quantiles(diffs: np.ndarray, probs: tuple[float, ...]) -> list[np.ndarray]:
    """Return quantiles over the draw axis (0) of ``diffs``, as ``np.quantile`` does.

    Equal to ``np.quantile(diffs, probs, axis=0)`` (the default linear
    method), but selects along a contiguous last axis with ``np.partition``,
    which is faster and releases the GIL, so blocks run in parallel threads.

    Args:
        diffs: Draws first, ``(D, ...)``.
        probs: Probabilities in ``[0, 1]``.
    """
    n = diffs.shape[0]
    rows = np.ascontiguousarray(np.moveaxis(diffs, 0, -1))
    positions = [p * (n - 1) for p in probs]
    below = [int(np.floor(v)) for v in positions]
    kth = sorted({k for b in below for k in (b, min(b + 1, n - 1))})
    part = np.partition(rows, kth, axis=-1)
    out = []
    for v, b in zip(positions, below, strict=True):
        a_ = part[..., b]
        b_ = part[..., min(b + 1, n - 1)]
        t = np.asarray(v - b, dtype=rows.dtype)
        diff = b_ - a_
        # numpy's lerp: from the nearer end, so t = 0 and t = 1 are exact
        value = a_ + diff * t if t < 0.5 else b_ - diff * (1 - t)
        out.append(value)
    return out
