"""W3: average treatment effect of an intervention.

Kernel: W1 plus a treatment argument ``t`` (0/1 per row),
``mu = alpha + X @ beta + tau * t + gamma * t * X[:, 0]``, with
``tau, gamma ~ Normal(0, 1)``. Fit: SVI, AutoNormal, Adam(1e-2), 500 steps on
5,000 rows with a random treatment; 1,000 posterior draws. Run: the ATE of
setting ``t = 1`` versus ``t = 0`` for all ``n`` rows, as a posterior
distribution over the draws.

Cases (each in its own process):
    two_call       reference: ``predict(X, t=1)`` and ``predict(X, t=0)`` (same
                   ``rng_key``, site ``y``, persisted), ``estimate_effect``, then
                   the mean over rows per draw.
    predict        one persisted ``predict(X, t=1)`` of ``y`` with the same key: the
                   draws the single pass reduces, for its "x one predict" ratio.
    single_pass    ``ImpactModel.compare_scenarios`` with scenarios ``treated``
                   (``t=1``) and ``control`` (``t=0``, the baseline), same
                   ``rng_key`` (and ``output_dir`` when the method takes one);
                   per-draw ATE read from ``result.tree["draws"]["ate"]``.
    aimz_two_call  the reference route with aimz (when importable).

Every case also checks its per-draw ATE against the exact per-draw mean of
``mu1 - mu0``, which for this kernel is ``tau + gamma * mean(X[:, 0])``.

Usage:
    python benchmarks/w3_effect.py --n 1000000 --reps 3
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path
from typing import Any

import numpy as np
import numpyro
import numpyro.distributions as dist

try:
    from benchmarks import common
    from benchmarks.w1_linear import FIT_STEPS, NUM_FEATURES, TRAIN_ROWS
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    import common  # type: ignore[no-redef]
    from w1_linear import FIT_STEPS, NUM_FEATURES, TRAIN_ROWS  # type: ignore[no-redef]

NAME = "w3_effect"
CASES = ("two_call", "predict", "single_pass", "aimz_two_call")
TARGET_SINGLE_VS_TWO = 0.15
TARGET_SINGLE_VS_PREDICT = 3.0
DRAW_BLOCK = 50  # draws per block when reducing a persisted effect over rows


def kernel(X, t, y=None):
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 5.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    tau = numpyro.sample("tau", dist.Normal(0.0, 1.0))
    gamma = numpyro.sample("gamma", dist.Normal(0.0, 1.0))
    with numpyro.plate("obs", X.shape[0]):
        mu = numpyro.deterministic("mu", alpha + X @ beta + tau * t + gamma * t * X[:, 0])
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def training_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """5,000 rows with a random 0/1 treatment, from fixed true parameters."""
    X = common.make_X(TRAIN_ROWS, NUM_FEATURES, seed=1)
    rng = np.random.default_rng(2)
    beta = rng.standard_normal(NUM_FEATURES).astype(np.float32)
    t = rng.integers(0, 2, TRAIN_ROWS).astype(np.float32)
    noise = rng.standard_normal(TRAIN_ROWS).astype(np.float32)
    y = 1.0 + X @ beta + 1.0 * t + 0.5 * t * X[:, 0] + 0.5 * noise
    return X, t, y.astype(np.float32)


def posterior(num_draws: int) -> dict[str, np.ndarray]:
    """The W3 posterior draws (fixed keys: identical in every process)."""
    X, t, y = training_data()
    return common.fit_autonormal(kernel, X, t, y, num_steps=FIT_STEPS, num_draws=num_draws)


def exact_ate(post: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """Per-draw mean over rows of ``mu1 - mu0``: ``tau + gamma * mean(X[:, 0])``."""
    x0_mean = float(np.mean(X[:, 0], dtype=np.float64))
    return post["tau"].astype(np.float64) + post["gamma"].astype(np.float64) * x0_mean


def per_draw_row_mean(da: Any, block: int = DRAW_BLOCK) -> np.ndarray:
    """Mean over every non-(chain, draw) dim, block of draws by block; shape (chain * draw,)."""
    row_dims = [d for d in da.dims if d not in ("chain", "draw")]
    parts = []
    for start in range(0, da.sizes["draw"], block):
        part = da.isel(draw=slice(start, start + block)).astype("float64")
        parts.append(np.asarray(part.mean(dim=row_dims).transpose("chain", "draw").values))
    return np.concatenate(parts, axis=1).reshape(-1)


def summarize(ate: np.ndarray, exact: np.ndarray) -> dict[str, Any]:
    """Posterior mean, sd, Monte Carlo error of the mean, and distance to the exact ATE."""
    ate = np.asarray(ate, dtype=np.float64).reshape(-1)
    summary: dict[str, Any] = {
        "ate_mean": float(ate.mean()),
        "ate_sd": float(ate.std(ddof=1)) if ate.size > 1 else None,
        "ate_mcse": float(ate.std(ddof=1) / np.sqrt(ate.size)) if ate.size > 1 else None,
        "exact_ate_mean": float(exact.mean()),
        "num_draws": int(ate.size),
    }
    if ate.shape == exact.shape:
        summary["max_abs_dev_from_exact"] = float(np.max(np.abs(ate - exact)))
    return summary


# ----------------------------------------------------------------------------
# Cases (run inside the worker process)
# ----------------------------------------------------------------------------


def _setup(package: str, params: dict[str, Any]) -> tuple[Any, dict[str, Any], np.ndarray]:
    common.import_impact_model(package)  # skip early, before any work
    post = posterior(int(params.get("draws", 1000)))
    X = common.make_X(int(params["n"]), NUM_FEATURES)
    model = common.new_impact_model(package, kernel, post)
    return model, post, X


def _effect_case(
    model: Any,
    route: Any,
    post: dict[str, np.ndarray],
    X: np.ndarray,
    workdir: str | None,
) -> common.Case:
    """Time ``route(out_dir) -> per-draw ATE``; afterwards measure and delete its outputs."""
    exact = exact_ate(post, X)

    def check(ate: np.ndarray, _folder: Path) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        temp_dir = getattr(model, "temp_dir", None)
        if temp_dir is not None and Path(temp_dir).exists():
            extra["model_temp_dir_bytes"] = common.dir_bytes(temp_dir)
        extra.update(summarize(ate, exact))
        return extra

    return common.folder_case(
        route,
        check,
        workdir=workdir,
        prefix="w3-bench-",
        model=model,
        info={"input_bytes": int(X.nbytes)},
    )


def build_two_call(package: str, params: dict[str, Any]) -> common.Case:
    import jax

    model, post, X = _setup(package, params)
    ones = np.ones(len(X), dtype=np.float32)
    zeros = np.zeros(len(X), dtype=np.float32)
    key = jax.random.key(2)
    extra_kwargs = common.batch_kwargs(params)

    def route(out_dir: Path) -> np.ndarray:
        common_kwargs = dict(
            rng_key=key,
            output_dir=str(out_dir),
            progress=False,
            return_sites=("y",),
            **extra_kwargs,
        )
        treated = model.predict(X, t=ones, **common_kwargs)
        control = model.predict(X, t=zeros, **common_kwargs)
        effect = model.estimate_effect(output_baseline=control, output_intervention=treated)
        _, y_effect = common.find_variable(effect, "y")
        return per_draw_row_mean(y_effect)

    return _effect_case(model, route, post, X, params.get("workdir"))


def build_predict(params: dict[str, Any]) -> common.Case:
    import jax

    model, _post, X = _setup("dopax", params)
    ones = np.ones(len(X), dtype=np.float32)
    kwargs = {"rng_key": jax.random.key(2), "progress": False, **common.batch_kwargs(params)}

    def produce(out_dir: Path) -> Any:
        return model.predict(X, t=ones, return_sites=("y",), output_dir=str(out_dir), **kwargs)

    def check(result: Any, _folder: Path) -> dict[str, Any]:
        return common.check_persisted(result, "y", (len(X),))

    return common.folder_case(
        produce,
        check,
        workdir=params.get("workdir"),
        prefix="w3-bench-",
        model=model,
        info={"input_bytes": int(X.nbytes)},
    )


def named_parameters(fn: Any) -> set[str]:
    """Names of the explicit parameters of ``fn`` (``**kwargs`` excluded)."""
    return {
        name
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    }


def build_single_pass(params: dict[str, Any]) -> common.Case:
    import jax

    model, post, X = _setup("dopax", params)
    ones = np.ones(len(X), dtype=np.float32)
    zeros = np.zeros(len(X), dtype=np.float32)
    # Options go only where compare_scenarios names them: its **kwargs are kernel arguments.
    accepted = named_parameters(model.compare_scenarios)
    extra_kwargs = common.batch_kwargs(params)
    if "rng_key" in accepted:
        extra_kwargs["rng_key"] = jax.random.key(2)

    def route(out_dir: Path) -> np.ndarray:
        if "output_dir" in accepted:
            extra_kwargs["output_dir"] = str(out_dir)
        result = model.compare_scenarios(
            X,
            {"treated": {"t": ones}, "control": {"t": zeros}},
            baseline="control",
            t=zeros,
            progress=False,
            **extra_kwargs,
        )
        ate = result.tree["draws"]["ate"]
        if "contrast" in ate.dims:
            coords = ate.coords.get("contrast")
            labels = [] if coords is None else [str(c) for c in coords.values]
            ate = ate.sel(contrast="treated") if "treated" in labels else ate.isel(contrast=0)
        return np.asarray(ate.transpose("chain", "draw").values, dtype=np.float64).reshape(-1)

    return _effect_case(model, route, post, X, params.get("workdir"))


BUILDERS = {
    "two_call": lambda params: build_two_call("dopax", params),
    "predict": build_predict,
    "single_pass": build_single_pass,
    "aimz_two_call": lambda params: build_two_call("aimz", params),
}


# ----------------------------------------------------------------------------
# The parent side
# ----------------------------------------------------------------------------


def run_workload(args: argparse.Namespace) -> dict[str, Any]:
    """Run every case in its own process; return the results payload."""
    params = common.pick(args, "n", "reps", "draws", "workdir", "batch_size")
    return common.cases_payload(NAME, args.cases, params, timeout=args.timeout)


def report(payload: dict[str, Any]) -> str:
    """Markdown table and target checks for a W3 payload."""
    results = payload["results"]
    params = payload["params"]
    single = results.get("single_pass", {})
    two = results.get("two_call", {})
    targets = [
        common.time_target(results, "single_pass", "two_call", TARGET_SINGLE_VS_TWO),
        common.time_target(results, "single_pass", "predict", TARGET_SINGLE_VS_PREDICT),
    ]
    if single.get("status") == "ok" and two.get("status") == "ok":
        diff = abs(single["extra"]["ate_mean"] - two["extra"]["ate_mean"])
        mcse = two["extra"]["ate_mcse"]
        verdict = "within" if mcse is not None and diff <= 3 * mcse else "NOT within"
        targets.append(
            f"- |mean ATE single - two-call| = {diff:.3g} vs 3 x MC se = "
            f"{3 * mcse:.3g} ({verdict} Monte Carlo error)"
        )
    else:
        targets.append("- same posterior mean ATE within Monte Carlo error: not measured")
    return common.report_text(
        f"### W3 effect: n = {params['n']:,} rows, {params['draws']:,} draws, t=1 vs t=0",
        common.timing_table(
            results,
            [
                common.versus(results, "two_call", "x two-call"),
                common.versus(results, "predict", "x predict"),
            ],
            cpu=False,
            extra=[
                common.extra_column("ate_mean", "ATE mean"),
                common.extra_column("ate_sd", "ATE sd"),
                common.extra_column("ate_mcse", "MC se"),
                common.extra_column("max_abs_dev_from_exact", "max |ATE - exact|"),
            ],
            first="route",
        ),
        results,
        notes=["", "exact = per-draw mean of mu1 - mu0 = tau + gamma * mean(X[:, 0])."],
        targets=targets,
    )


def arg_parser() -> argparse.ArgumentParser:
    return common.base_arg_parser(
        __doc__.splitlines()[0],
        helps={"batch_size": "batch_size for dopax"},
        n=1_000_000,
        cases=CASES,
        batch_size=None,
    )


main = common.workload_cli(NAME, arg_parser, run_workload, report, BUILDERS)

if __name__ == "__main__":
    raise SystemExit(main())
