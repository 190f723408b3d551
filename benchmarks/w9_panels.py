"""W9: the models aimz's FAQ turns away stream: per-row latents and ``scan`` panels.

(a) A Poisson kernel with a per-row latent (``z ~ Normal(0, 1)`` in the row
plate; ``log rate = a + X @ b + s * z``), fitted with ``AutoNormal``
(full-batch SVI on the rows it predicts), in-sample ``predict`` of ``y``:

    latent          dopax ``predict`` persisted to Zarr; the guide's per-row
                    sites are drawn block by block. With ``--loaded``, a
                    first process fits and saves (``latent_save``) and the
                    timed one loads the model and predicts, as a scoring job
                    does; ``--inputs zarr`` then reads the rows from a Zarr
                    array block by block instead of holding them.
    predictive      NumPyro ``Predictive(kernel, guide=..., params=...)`` of
                    ``y`` in memory, the same posterior.
    latent_equal    draws of ``y`` and ``eta`` at two block sizes and from
                    ``predict_on_batch``, compared cell by cell.
    latent_trace    the same kernel fitted by NUTS into a ``ZarrTrace`` whose
                    ``z`` posterior exceeds the block budget; ``predict`` at
                    two block sizes, compared.

(b) An AR(1) panel: units on axis 0 of the inputs, ``scan`` over the weeks,
a treatment from week ``--start`` on the treated half of the units. The
posterior is fitted (``AutoNormal``) on a small simulated panel; predictions
are in-sample calls on ``--units`` units (``y`` is ``(weeks, units)``):

    panel           dopax ``predict`` of ``y`` persisted; chunks along units.
    panel_effect    ``compare_scenarios`` (as observed vs the treatment
                    switched off) on the post-period mean; the true effect
                    must lie in the treated units' 95% interval.
    panel_equal     ``predict`` persisted vs ``predict_on_batch``.

Every dopax case records the warnings its calls emitted (a kernel that ran
with all rows together would say so) and the peak RSS of the call itself:
the process's high-water mark is reset (``/proc/self/clear_refs``) just
before each timed call, so the fit that sets a case up is not counted
(``peak_rss_gib`` keeps the whole process's peak); ``call_start_rss_gib`` is
the resident set the call started from.

Usage (sizes are flags, so a larger machine runs the issue's sizes):
    python benchmarks/w9_panels.py latent --sizes 100000,1000000,4000000 \\
        --draws 1000 --reference-size 1000000 --trace-rows 100000 --workdir /work/bench
    python benchmarks/w9_panels.py panel --units 20000,200000,1000000 --draws 100 \\
        --batch-size 1000 --workdir /work/bench
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:
    from benchmarks import common
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    import common  # type: ignore[no-redef]

NAME = "w9_panels"
NUM_FEATURES = 3
BETA = np.asarray([1.0, -1.0, 0.5], np.float32)
TARGET_RSS_RATIO = 1.1
TARGET_RSS_GIB = 1.5
TARGET_VS_PREDICTIVE = 1.0
WEEKS = 52
START = 40
EFFECT = 1.5
PHI = 0.6
SIGMA = 0.8
FIT_UNITS = 2_000


# ----------------------------------------------------------------------------
# Kernels and data
# ----------------------------------------------------------------------------


def latent_kernel(X: Any, y: Any = None) -> None:
    """The issue's kernel: Poisson counts with one latent ``z`` per row."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    a = numpyro.sample("a", dist.Normal(0.0, 1.0))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    with numpyro.plate("obs", X.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        eta = numpyro.deterministic("eta", a + X @ b + s * z)
        numpyro.sample("y", dist.Poisson(jnp.exp(eta)), obs=y)


def latent_data(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``(n, 3)`` and counts, simulated in chunks (no float64 copy of the rows)."""
    X = common.make_X(n, NUM_FEATURES)
    X *= 0.5
    y = np.empty(n, np.int32)
    rng = np.random.default_rng(1)
    for start in range(0, n, 1_000_000):
        part = X[start : start + 1_000_000]
        eta = 0.5 + part @ BETA + 0.5 * rng.standard_normal(len(part), dtype=np.float32)
        y[start : start + len(part)] = rng.poisson(np.exp(eta))
    return X, y


def ar1_panel(X: Any, treat: Any, window: Any, y: Any = None) -> None:
    """AR(1) noise around ``a + b * x_i + effect * treat_t * treated_i``, scanned over weeks."""
    import numpyro
    import numpyro.distributions as dist
    from numpyro.contrib.control_flow import scan

    n = X.shape[0]
    a = numpyro.sample("a", dist.Normal(0.0, 5.0))
    b = numpyro.sample("b", dist.Normal(0.0, 2.0))
    tau = numpyro.sample("effect", dist.Normal(0.0, 5.0))
    phi = numpyro.sample("phi", dist.Uniform(-0.99, 0.99))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    mu = (a + b * X[:, 0])[None, :] + tau * treat[:, None] * X[None, :, 1]  # (T, n)

    def week(prev: Any, inputs: Any) -> Any:
        prev_mu, prev_y = prev
        mu_t, y_t = inputs
        with numpyro.plate("unit", n):
            y_new = numpyro.sample(
                "y", dist.Normal(mu_t + phi * (prev_y - prev_mu), sigma), obs=y_t
            )
        return (mu_t, y_new), y_new

    _, path = scan(week, (mu[0], mu[0]), (mu, None if y is None else y.T))
    numpyro.deterministic("post_mean", (window[:, None] * path).sum(0) / window.sum())


def panel_inputs(units: int, weeks: int, start: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``X`` (covariate, treated flag), ``treat`` and ``window`` of a panel."""
    rng = np.random.default_rng(seed)
    X = np.empty((units, 2), np.float32)
    X[:, 0] = rng.standard_normal(units, dtype=np.float32)
    X[:, 1] = rng.random(units) < 0.5
    treat = (np.arange(weeks) >= start).astype(np.float32)
    return {"X": X, "treat": treat, "window": treat.copy()}


def panel_outcomes(inputs: dict[str, np.ndarray], seed: int = 1) -> np.ndarray:
    """Simulated ``(units, weeks)`` outcomes with the true effect and AR(1) noise."""
    rng = np.random.default_rng(seed)
    X, treat = inputs["X"], inputs["treat"]
    mu = (2.0 + 0.7 * X[:, 0])[:, None] + EFFECT * X[:, 1:2] * treat[None, :]
    noise = np.zeros_like(mu)
    noise[:, 0] = rng.normal(0.0, SIGMA / np.sqrt(1 - PHI**2), len(X))
    for t in range(1, mu.shape[1]):
        noise[:, t] = PHI * noise[:, t - 1] + rng.normal(0.0, SIGMA, len(X))
    return (mu + noise).astype(np.float32)


# ----------------------------------------------------------------------------
# Measurement helpers
# ----------------------------------------------------------------------------


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux); return whether it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def current_peak_rss_bytes() -> int:
    """This process's peak RSS since the last reset (Linux ``VmHWM``), else ``ru_maxrss``."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return common.peak_rss_bytes()


def current_rss_bytes() -> int:
    """This process's resident set now (Linux ``VmRSS``), else 0."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _with_call_peak(case: common.Case) -> common.Case:
    """Record the peak RSS of each timed call itself and the user warnings it emitted.

    The call's result goes on to the case's own ``finish``; the figures join its
    extras as ``call_peak_rss_gib`` and ``warnings``.
    """
    call, finish = case.call, case.finish

    def wrapped_call() -> Any:
        reset = reset_peak_rss()
        start = current_rss_bytes()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = call()
        peak = current_peak_rss_bytes() if reset else None
        caught_text = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        return out, (start, peak), caught_text

    def wrapped_finish(wrapped: Any) -> dict[str, Any]:
        out, (start, peak), caught = wrapped
        extra = {"call_peak_rss_gib": None if peak is None else peak / common.GIB}
        extra["call_start_rss_gib"] = start / common.GIB
        extra["warnings"] = caught
        extra.update(finish(out) if finish is not None else {})
        return extra

    case.call, case.finish = wrapped_call, wrapped_finish
    return case


def _svi(kernel: Any) -> Any:
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal
    from numpyro.optim import Adam

    return SVI(kernel, AutoNormal(kernel), Adam(0.02), Trace_ELBO())


def _model(kernel: Any) -> Any:
    import jax

    impact_model = common.import_impact_model("dopax")
    return impact_model(kernel, rng_key=jax.random.key(3), inference=_svi(kernel))


def fit_latent(n: int, draws: int, steps: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """Fit the latent kernel on ``n`` simulated rows (full-batch SVI, fixed keys)."""
    import jax

    X, y = latent_data(n)
    model = _model(latent_kernel)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The SVI loss was still falling")
        model.fit_on_batch(
            X, y, num_steps=steps, num_samples=draws, rng_key=jax.random.key(4), progress=False
        )
    return model, X, y


def _persisted_predict(
    model: Any, X: np.ndarray, params: dict[str, Any], sites: Sequence[str], **kwargs: Any
) -> common.Case:
    import jax

    key = jax.random.key(2)
    batch_size = params.get("batch_size")

    def produce(out_dir: Path) -> Any:
        return model.predict(
            X,
            rng_key=key,
            batch_size=batch_size,
            return_sites=list(sites),
            output_dir=str(out_dir),
            progress=False,
            **kwargs,
        )

    def check(tree: Any, _folder: Path) -> dict[str, Any]:
        var = tree["posterior_predictive"][sites[0]]
        return {
            "shape": [int(s) for s in var.shape],
            "chunks": [int(c) for c in var.encoding.get("chunks", ())],
            "path": tree.attrs.get("path"),
            "batch_size": tree.attrs.get("batch_size"),
            "complete": bool(np.isfinite(np.asarray(var[(-1,) * var.ndim].values))),
        }

    case = common.folder_case(
        produce, check, workdir=params.get("workdir"), prefix="w9-", model=model
    )
    return _with_call_peak(case)


def _compare(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in a:
        x, y = a[name], b[name]
        if x.dtype.kind in "iub":
            out[f"{name}_cells_differing"] = int((x != y).sum())
        else:
            out[f"{name}_max_abs_diff"] = float(np.abs(x - y).max())
            close = np.isclose(x, y, rtol=1e-5, atol=1e-6)
            out[f"{name}_cells_beyond_tolerance"] = int((~close).sum())
        out["cells"] = int(x.size)
    return out


def _values(tree: Any, sites: Sequence[str]) -> dict[str, np.ndarray]:
    node = tree["posterior_predictive"]
    return {s: np.asarray(node[s].values).reshape(-1, *node[s].shape[2:]) for s in sites}


# ----------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------


def build_latent_save(params: dict[str, Any]) -> common.Case:
    """The set-up of a loaded ``latent`` case (the timed call fits and saves, see below).

    The model goes to ``params["path"]``; with ``inputs="zarr"`` the rows go to
    a Zarr array beside it (:func:`_stored_inputs`), as a job that scores
    stored rows finds them.
    """
    dopax = common.import_dopax()

    def call() -> Any:
        n = int(params["n"])
        model, X, _ = fit_latent(n, int(params["draws"]), int(params["fit_steps"]))
        if params.get("inputs") == "zarr":
            import zarr

            stored = zarr.create_array(
                _stored_inputs(params["path"]), shape=X.shape, chunks=(100_000, X.shape[1]),
                dtype=X.dtype,
            )  # fmt: skip
            stored[...] = X
        return dopax.save_model(model, params["path"], overwrite=True)

    return common.Case(call=call, finish=lambda path: {"path": path})


def _stored_inputs(saved: str) -> Path:
    return Path(saved).with_name(Path(saved).name + "-X.zarr")


def build_latent(params: dict[str, Any]) -> common.Case:
    n = int(params["n"])
    if params.get("saved"):
        # a process that only loads and predicts, as a served or batch-scoring one does
        dopax = common.import_dopax()
        model = dopax.load_model(params["saved"], latent_kernel, inference=_svi(latent_kernel))
        if params.get("inputs") == "zarr":
            import zarr

            X = zarr.open_array(_stored_inputs(params["saved"]), mode="r")
        else:
            X, _ = latent_data(n)
    else:
        model, X, _ = fit_latent(n, int(params["draws"]), int(params["fit_steps"]))
    case = _persisted_predict(model, X, params, ("y",))
    case.info = {
        "input_bytes": int(np.dtype(X.dtype).itemsize * np.prod(X.shape)),
        "inputs": params.get("inputs", "memory"),
        "loaded": bool(params.get("saved")),
        "rss_before_calls_gib": current_rss_bytes() / common.GIB,
        "posterior_sites": sorted(model.posterior),
    }
    return case


def build_predictive(params: dict[str, Any]) -> common.Case:
    import jax
    from numpyro.infer import Predictive

    model, X, _ = fit_latent(int(params["n"]), int(params["draws"]), int(params["fit_steps"]))
    predictive = Predictive(
        latent_kernel,
        guide=model.inference.guide,
        params=dict(model.vi_result.params),
        num_samples=int(params["draws"]),
        return_sites=["y"],
    )
    key = jax.random.key(2)

    def call() -> Any:
        return jax.block_until_ready(predictive(key, X))

    def finish(values: Any) -> dict[str, Any]:
        return {"output_bytes": int(sum(v.nbytes for v in values.values()))}

    return _with_call_peak(common.Case(call=call, finish=finish))


def build_latent_equal(params: dict[str, Any]) -> common.Case:
    import jax

    model, X, _ = fit_latent(int(params["n"]), int(params["draws"]), int(params["fit_steps"]))
    sizes = [int(s) for s in params["block_rows"]]
    sites = ("y", "eta")
    key = jax.random.key(2)

    def call() -> list[dict[str, np.ndarray]]:
        outs = [_values(model.predict_on_batch(X, rng_key=key, return_sites=list(sites)), sites)]
        for size in sizes:
            tree = model.predict(
                X, rng_key=key, batch_size=size, return_sites=list(sites), progress=False
            )
            outs.append(_values(tree, sites))
        return outs

    def finish(outs: list[dict[str, np.ndarray]]) -> dict[str, Any]:
        extra: dict[str, Any] = {"block_rows": sizes}
        for size, other in zip(sizes, outs[1:], strict=True):
            extra[f"on_batch_vs_{size}"] = _compare(outs[0], other)
        if len(outs) > 2:
            extra[f"{sizes[0]}_vs_{sizes[1]}"] = _compare(outs[1], outs[2])
        return extra

    return _with_call_peak(common.Case(call=call, finish=finish, close=common.closer(model)))


def build_latent_trace(params: dict[str, Any]) -> common.Case:
    import jax
    from numpyro.infer import MCMC, NUTS

    dopax = common.import_dopax()
    n = int(params["n"])
    chains, draws = int(params["chains"]), int(params["trace_draws"])
    X, y = latent_data(n)
    where = common.make_temp_dir(params.get("workdir"), "w9-trace-")
    mcmc = MCMC(
        NUTS(latent_kernel, max_tree_depth=int(params.get("tree_depth", 5))),
        num_warmup=int(params.get("warmup_draws", 200)),
        num_samples=draws,
        num_chains=chains,
        chain_method="sequential",
        progress_bar=False,
    )
    model = dopax.ImpactModel(latent_kernel, jax.random.key(3), mcmc)
    model.fit_on_batch(
        X,
        y,
        rng_key=jax.random.key(4),
        progress=False,
        trace=dopax.ZarrTrace(where / "trace.zarr", draws_per_chunk=50),
    )
    sizes = [int(s) for s in params["block_rows"]]
    key = jax.random.key(2)
    z_bytes = chains * draws * n * 4

    def call() -> list[tuple[Any, Path]]:
        outs = []
        for size in sizes:
            out_dir = Path(tempfile.mkdtemp(prefix="predict-", dir=where))
            tree = model.predict(
                X,
                rng_key=key,
                batch_size=size,
                return_sites=["y", "eta"],
                output_dir=str(out_dir),
                progress=False,
            )
            outs.append((tree, out_dir))
        return outs

    def finish(outs: list[tuple[Any, Path]]) -> dict[str, Any]:
        budget = dopax.config.get_config().budget_bytes()
        values = [_values(tree, ("y", "eta")) for tree, _ in outs]
        extra = {
            "z_posterior_bytes": z_bytes,
            "block_budget_bytes": budget,
            "paths": [tree.attrs.get("path") for tree, _ in outs],
            "block_rows": sizes,
            f"{sizes[0]}_vs_{sizes[-1]}": _compare(values[0], values[-1]),
        }
        for _, out_dir in outs:
            shutil.rmtree(out_dir, ignore_errors=True)
        return extra

    return _with_call_peak(common.Case(call=call, finish=finish, close=common.closer(model, where)))


def panel_posterior(draws: int, steps: int, weeks: int, start: int) -> dict[str, np.ndarray]:
    """Posterior of the panel kernel fitted on a small simulated panel (fixed keys)."""
    import jax

    inputs = panel_inputs(FIT_UNITS, weeks, start, seed=10)
    y = panel_outcomes(inputs, seed=11)
    model = _model(ar1_panel)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The SVI loss was still falling")
        model.fit_on_batch(
            inputs["X"],
            y,
            treat=inputs["treat"],
            window=inputs["window"],
            num_steps=steps,
            num_samples=draws,
            rng_key=jax.random.key(5),
            progress=False,
        )
    return dict(model.posterior)


def _panel_model(params: dict[str, Any]) -> tuple[Any, dict[str, np.ndarray]]:
    weeks, start = int(params["weeks"]), int(params["start"])
    post = panel_posterior(int(params["draws"]), int(params["fit_steps"]), weeks, start)
    model = _model(ar1_panel).set_posterior_sample(post)
    return model, panel_inputs(int(params["units"]), weeks, start)


def build_panel(params: dict[str, Any]) -> common.Case:
    model, inputs = _panel_model(params)
    X = inputs.pop("X")
    case = _persisted_predict(model, X, params, ("y",), **inputs)
    case.info = {"input_bytes": int(X.nbytes)}
    return case


def build_panel_effect(params: dict[str, Any]) -> common.Case:
    import jax

    model, inputs = _panel_model(params)
    X = inputs.pop("X")
    by = np.where(X[:, 1] > 0, "treated", "untreated")
    key = jax.random.key(6)

    def call() -> Any:
        return model.compare_scenarios(
            X,
            {"as observed": {}, "no treatment": {"treat": 0.0}},
            baseline="no treatment",
            site="post_mean",
            by=by,
            interval=0.95,
            rng_key=key,
            batch_size=params.get("batch_size"),
            progress=False,
            **inputs,
        )

    def finish(result: Any) -> dict[str, Any]:
        table = result.summary(prob=0.95, interval="eti")
        row = table.loc[("ate_by_group", "as observed - no treatment | treated")]
        low, high = float(row["eti_low"]), float(row["eti_high"])
        return {
            "true_effect": EFFECT,
            "estimate": float(row["mean"]),
            "interval_95": [low, high],
            "inside": bool(low <= EFFECT <= high),
        }

    return _with_call_peak(common.Case(call=call, finish=finish))


def build_panel_equal(params: dict[str, Any]) -> common.Case:
    import jax

    model, inputs = _panel_model(params)
    X = inputs.pop("X")
    key = jax.random.key(2)
    size = int(params["batch_size"])

    def call() -> list[dict[str, np.ndarray]]:
        on_batch = model.predict_on_batch(X, rng_key=key, return_sites=["y"], **inputs)
        tree = model.predict(
            X, rng_key=key, batch_size=size, return_sites=["y"], progress=False, **inputs
        )
        return [_values(on_batch, ("y",)), _values(tree, ("y",))]

    def finish(outs: list[dict[str, np.ndarray]]) -> dict[str, Any]:
        return {"batch_size": size, **_compare(outs[0], outs[1])}

    return _with_call_peak(common.Case(call=call, finish=finish))


BUILDERS = {
    "latent_save": build_latent_save,
    "latent": build_latent,
    "predictive": build_predictive,
    "latent_equal": build_latent_equal,
    "latent_trace": build_latent_trace,
    "panel": build_panel,
    "panel_effect": build_panel_effect,
    "panel_equal": build_panel_equal,
}


# ----------------------------------------------------------------------------
# The parent side
# ----------------------------------------------------------------------------


def run_latent(args: argparse.Namespace) -> dict[str, Any]:
    base = {"draws": args.draws, "fit_steps": args.fit_steps, "workdir": args.workdir}
    results: dict[str, Any] = {}
    for n in args.sizes:
        loaded: dict[str, Any] = {}
        if args.loaded:
            where = common.make_temp_dir(args.workdir, "w9-saved-") / f"latent-{n}"
            results[f"fit_{n}"] = common.run_case(
                NAME, "latent_save", timeout=args.timeout, **base, n=n, path=str(where),
                inputs=args.inputs, reps=1, warmup=0,
            )  # fmt: skip
            loaded = {"saved": str(where), "inputs": args.inputs}
        results[f"latent_{n}"] = common.run_case(
            NAME, "latent", timeout=args.timeout, **base, **loaded, n=n,
            batch_size=args.batch_size, reps=args.reps, warmup=1,
        )  # fmt: skip
        if loaded:
            shutil.rmtree(Path(loaded["saved"]).parent, ignore_errors=True)
    if args.reference_size:
        n = args.reference_size
        results[f"predictive_{n}"] = common.run_case(
            NAME, "predictive", timeout=args.timeout, **base, n=n, reps=args.reps, warmup=1
        )
    if args.equal_rows:
        results["latent_equal"] = common.run_case(
            NAME, "latent_equal", timeout=args.timeout, **{**base, "draws": args.equal_draws},
            n=args.equal_rows, block_rows=args.block_rows, reps=1, warmup=0,
        )  # fmt: skip
    if args.trace_rows:
        results["latent_trace"] = common.run_case(
            NAME, "latent_trace", timeout=args.timeout, workdir=args.workdir,
            n=args.trace_rows, chains=args.trace_chains, trace_draws=args.trace_draws,
            block_rows=args.block_rows, reps=1, warmup=0,
        )  # fmt: skip
    return results


def run_panel(args: argparse.Namespace) -> dict[str, Any]:
    base = {
        "draws": args.draws,
        "fit_steps": args.fit_steps,
        "workdir": args.workdir,
        "weeks": args.weeks,
        "start": args.start,
        "batch_size": args.batch_size,
    }
    results: dict[str, Any] = {}
    for units in args.units:
        results[f"panel_{units}"] = common.run_case(
            NAME, "panel", timeout=args.timeout, **base, units=units, reps=args.reps, warmup=1
        )
    if args.effect_units:
        results["panel_effect"] = common.run_case(
            NAME, "panel_effect", timeout=args.timeout, **base, units=args.effect_units,
            reps=1, warmup=0,
        )  # fmt: skip
    if args.equal_units:
        results["panel_equal"] = common.run_case(
            NAME, "panel_equal", timeout=args.timeout, **base, units=args.equal_units,
            reps=1, warmup=0,
        )  # fmt: skip
    return results


def _peak(res: dict[str, Any] | None) -> float | None:
    if not res or res.get("status") != "ok":
        return None
    peaks = [e.get("call_peak_rss_gib") for e in res.get("extra_per_rep", [])]
    peaks = [p for p in peaks if p is not None]
    return max(peaks) if peaks else None


def run_workload(args: argparse.Namespace) -> dict[str, Any]:
    """Run the cases of part ``latent`` or ``panel``, each in its own process."""
    results = run_latent(args) if args.part == "latent" else run_panel(args)
    params = {k: v for k, v in vars(args).items() if k not in ("timeout", "set", "no_save")}
    return {"workload": NAME, "part": args.part, "params": params, "results": results}


def report(payload: dict[str, Any]) -> str:
    """A table with every case's figures, and the target checks."""
    results = payload["results"]

    def notes(_key: str, res: dict[str, Any]) -> Any:
        if res.get("status") != "ok":
            return f"{res.get('status')}: {res.get('reason')}"
        left_out = ("call_peak_rss_gib", "disk_bytes", "complete")
        return {k: v for k, v in common.extra_of(res).items() if k not in left_out}

    columns = [
        common.titled("s", common.SECONDS),
        common.CPU_SECONDS,
        ("call peak RSS GiB", lambda _key, res: _peak(res)),
        common.titled("process peak RSS GiB", common.PEAK_RSS),
        ("notes", notes),
    ]
    lines = [f"W9 {payload['part']} ({payload['params']})", ""]
    lines.append(common.case_table(results, columns))
    sized = [(k, _peak(v)) for k, v in results.items() if k.startswith(("latent_", "panel_"))]
    sized = [(k, p) for k, p in sized if k.split("_")[-1].isdigit() and p is not None]
    if len(sized) >= 2:
        ratio = sized[-1][1] / sized[0][1]
        lines.append("")
        lines.append(
            f"call peak RSS {sized[-1][0]} / {sized[0][0]}: {ratio:.3f} "
            f"(target <= {TARGET_RSS_RATIO}); largest {sized[-1][1]:.3f} GiB "
            f"(target <= {TARGET_RSS_GIB})"
        )
    refs = [k for k in results if k.startswith("predictive_")]
    for ref in refs:
        n = ref.split("_")[-1]
        mine, theirs = results.get(f"latent_{n}"), results[ref]
        if mine and mine.get("status") == "ok" and theirs.get("status") == "ok":
            lines.append(
                f"dopax / Predictive at {n} rows: {mine['seconds'] / theirs['seconds']:.3f} "
                f"(CPU {mine['cpu_seconds'] / theirs['cpu_seconds']:.3f}; "
                f"target <= {TARGET_VS_PREDICTIVE})"
            )
    return "\n".join(lines)


def arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="W9: per-row latents and scan panels")
    parts = parser.add_subparsers(dest="part", required=True)
    latent = parts.add_parser("latent", help="(a) the per-row latent Poisson kernel")
    common.add_options(
        latent, helps={"sizes": "rows, comma-separated"}, sizes=[100_000, 400_000], draws=1000
    )
    latent.add_argument("--fit-steps", type=int, default=1000)
    common.add_options(latent, batch_size=None)
    latent.add_argument(
        "--loaded",
        action="store_true",
        help="fit and save in one process, load and predict in another (as a scoring job does)",
    )
    latent.add_argument(
        "--inputs",
        choices=("memory", "zarr"),
        default="memory",
        help="with --loaded: rows in memory or in a Zarr array read block by block",
    )
    latent.add_argument("--reference-size", type=int, default=0, help="rows of Predictive")
    latent.add_argument("--equal-rows", type=int, default=100_000)
    latent.add_argument("--equal-draws", type=int, default=200)
    latent.add_argument("--block-rows", type=common.ints, default=[7777, 50_000])
    latent.add_argument("--trace-rows", type=int, default=0)
    latent.add_argument("--trace-chains", type=int, default=2)
    latent.add_argument("--trace-draws", type=int, default=250)
    panel = parts.add_parser("panel", help="(b) the AR(1) panel")
    panel.add_argument(
        "--units", type=common.ints, default=[20_000, 100_000], help="units, comma-separated"
    )
    common.add_options(panel, draws=100)
    panel.add_argument("--fit-steps", type=int, default=2000)
    panel.add_argument("--weeks", type=int, default=WEEKS)
    panel.add_argument("--start", type=int, default=START)
    common.add_options(panel, batch_size=1000)
    panel.add_argument("--effect-units", type=int, default=20_000)
    panel.add_argument("--equal-units", type=int, default=20_000)
    for p in (latent, panel):
        common.add_options(p, reps=1, workdir=None, timeout=None, name=None, no_save=False, set=[])
    return parser


main = common.workload_cli(NAME, arg_parser, run_workload, report, BUILDERS, "w9_panels_{part}")

if __name__ == "__main__":
    raise SystemExit(main())
