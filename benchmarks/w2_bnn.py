"""W2: Bayesian neural network, compute-bound.

Kernel: an MLP 100 -> 128 -> 128 -> 128 -> 1 with ReLU and a sigmoid output;
every weight matrix and bias is a latent ``sample`` site (``w0``, ``b0``, ...,
``w3``, ``b3``) with a ``Normal(0, 1)`` prior; ``y ~ Bernoulli(p)`` in a plate
over rows. Fit: SVI, AutoNormal, Adam(1e-2), 100 steps on 10,000 rows; 1,000
posterior draws. Run: predictive draws of ``y`` on 20,000 rows.

The network is written with plain ``numpyro.sample`` sites rather than flax:
the compiled program is the same matrix products either way, the site names stay
free of ``/`` (which DataTree rejects), there are no ``param`` sites, and the
compute floor below evaluates literally the same forward function.

Cases (each in its own process):
    floor       the same forward pass and Bernoulli draws for all posterior draws
                as one jitted JAX program (``lax.map`` over chunks of draws,
                ``vmap`` within a chunk: one draw per chunk on CPU, where that
                is fastest, else as many as fit 8 GiB of hidden activations),
                reduced to a scalar so that nothing is kept.
    predictive, dopax, aimz
                as in W1 (``benchmarks/w1_linear.py``), on this kernel.

Usage:
    python benchmarks/w2_bnn.py --n 20000 --reps 3
"""

from __future__ import annotations

import argparse
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

try:
    from benchmarks import common
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    import common  # type: ignore[no-redef]

NAME = "w2_bnn"
LAYERS = (100, 128, 128, 128, 1)
TRAIN_ROWS = 10_000
FIT_STEPS = 100
CASES = ("floor", "predictive", "dopax", "aimz")
FLOOR_CHUNK_BUDGET = 8 * 2**30  # bytes of hidden activations per chunk, accelerators
TARGET_VS_FLOOR = 1.05
TARGET_VS_PREDICTIVE = 1.0


def mlp_probs(weights: dict[str, Any], X: Any) -> Any:
    """Forward pass: ReLU hidden layers, sigmoid output; ``weights`` holds w0, b0, ..."""
    h = X
    last = len(LAYERS) - 2
    for i in range(last + 1):
        h = h @ weights[f"w{i}"] + weights[f"b{i}"]
        if i < last:
            h = jax.nn.relu(h)
    return jax.nn.sigmoid(h[..., 0])


def kernel(X, y=None):
    weights = {}
    for i, (d_in, d_out) in enumerate(itertools.pairwise(LAYERS)):
        weights[f"w{i}"] = numpyro.sample(
            f"w{i}", dist.Normal(0.0, 1.0).expand([d_in, d_out]).to_event(2)
        )
        weights[f"b{i}"] = numpyro.sample(
            f"b{i}", dist.Normal(0.0, 1.0).expand([d_out]).to_event(1)
        )
    p = mlp_probs(weights, X)
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Bernoulli(probs=p), obs=y)


def training_data(rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows with a Bernoulli outcome from a fixed logistic rule."""
    X = common.make_X(rows, LAYERS[0], seed=1)
    rng = np.random.default_rng(2)
    w = rng.standard_normal(LAYERS[0]).astype(np.float32) / np.sqrt(LAYERS[0])
    p = 1.0 / (1.0 + np.exp(-(X @ w)))
    y = (rng.random(rows) < p).astype(np.int32)
    return X, y


def posterior(params: dict[str, Any]) -> dict[str, np.ndarray]:
    """The W2 posterior draws (fixed keys: identical in every process)."""
    X, y = training_data(int(params.get("train_rows", TRAIN_ROWS)))
    return common.fit_autonormal(
        kernel,
        X,
        y,
        num_steps=int(params.get("steps", FIT_STEPS)),
        num_draws=int(params.get("draws", 1000)),
    )


# ----------------------------------------------------------------------------
# Cases (run inside the worker process)
# ----------------------------------------------------------------------------


def auto_floor_chunk(n: int, num_draws: int) -> int:
    """Draws per vmapped chunk of the floor program.

    On CPU, 1: XLA's CPU batched matmuls (what ``vmap`` over draws makes of the
    hidden layers) cost about 1.4x the CPU time of one plain matmul per draw, so
    the fastest form maps over draws one by one. On an accelerator, as many draws
    as keep two hidden activations of a chunk within ``FLOOR_CHUNK_BUDGET``.
    """
    if jax.default_backend() == "cpu":
        return 1
    per_draw = 2 * n * max(LAYERS[1:-1]) * 4
    return max(1, min(num_draws, FLOOR_CHUNK_BUDGET // per_draw))


def build_floor(params: dict[str, Any]) -> common.Case:
    post = {k: jnp.asarray(v) for k, v in posterior(params).items()}
    X = jnp.asarray(common.make_X(int(params["n"]), LAYERS[0]))
    num_draws = len(post["w0"])
    chunk = int(params.get("floor_chunk") or auto_floor_chunk(X.shape[0], num_draws))
    chunk = max(1, min(num_draws, chunk))

    @jax.jit
    def program(post: dict[str, Any], X: Any, key: Any) -> Any:
        def one_draw(args: tuple[dict[str, Any], Any]) -> Any:
            weights, draw_key = args
            y = jax.random.bernoulli(draw_key, mlp_probs(weights, X))
            return jnp.sum(y, dtype=jnp.int32)

        keys = jax.random.split(key, num_draws)
        if chunk == 1:
            # A plain loop over draws; batch_size=1 would vmap each draw by one,
            # turning its matrix products into slower batched ones on CPU.
            return jnp.sum(jax.lax.map(one_draw, (post, keys)))
        return jnp.sum(jax.lax.map(one_draw, (post, keys), batch_size=chunk))

    key = jax.random.key(2)

    def call() -> Any:
        return jax.block_until_ready(program(post, X, key))

    return common.Case(call=call, info={"input_bytes": int(X.nbytes), "floor_chunk": chunk})


def build_predictive(params: dict[str, Any]) -> common.Case:
    X = common.make_X(int(params["n"]), LAYERS[0])
    return common.predictive_case(kernel, posterior(params), X)


def build_impact_model(package: str, params: dict[str, Any]) -> common.Case:
    common.import_impact_model(package)  # skip early, before any work
    post = posterior(params)
    X = common.make_X(int(params["n"]), LAYERS[0])
    return common.persisted_predict_case(
        package,
        kernel,
        post,
        X,
        check_site="y",
        workdir=params.get("workdir"),
        predict_kwargs=common.batch_kwargs(params),
    )


BUILDERS = {
    "floor": build_floor,
    "predictive": build_predictive,
    "dopax": lambda params: build_impact_model("dopax", params),
    "aimz": lambda params: build_impact_model("aimz", params),
}


# ----------------------------------------------------------------------------
# The parent side
# ----------------------------------------------------------------------------


def run_workload(args: argparse.Namespace) -> dict[str, Any]:
    """Run every case in its own process (``--rounds`` interleaved times); return the payload."""
    params = common.pick(
        args, "n", "reps", "draws", "train_rows", "steps", "workdir", "batch_size", "floor_chunk"
    )
    return common.cases_payload(NAME, args.cases, params, rounds=args.rounds, timeout=args.timeout)


def report(payload: dict[str, Any]) -> str:
    """Markdown table and target checks for a W2 payload."""
    results = payload["results"]
    params = payload["params"]
    chunk = results.get("floor", {}).get("info", {}).get("floor_chunk")
    return common.report_text(
        f"### W2 BNN {'-'.join(map(str, LAYERS))}: predict n = {params['n']:,} rows, "
        f"{params['draws']:,} draws (fit {params['steps']} steps on {params['train_rows']:,} "
        f"rows{'' if chunk is None else f'; floor: lax.map over chunks of {chunk} draws'})",
        common.timing_table(results, ["floor", "predictive"], extra=[common.COMPLETE]),
        results,
        notes=common.round_notes(results, "dopax", "floor"),
        targets=[
            common.time_target(results, "dopax", "floor", TARGET_VS_FLOOR),
            common.time_target(results, "dopax", "predictive", TARGET_VS_PREDICTIVE),
        ],
    )


def arg_parser() -> argparse.ArgumentParser:
    parser = common.base_arg_parser(
        __doc__.splitlines()[0],
        helps={"n": "rows to predict on"},
        n=20_000,
        cases=CASES,
        batch_size=None,
        rounds=1,
    )
    parser.add_argument("--train-rows", type=int, default=TRAIN_ROWS)
    parser.add_argument("--steps", type=int, default=FIT_STEPS, help="SVI steps")
    parser.add_argument(
        "--floor-chunk",
        type=int,
        default=None,
        help="draws per vmapped chunk in the floor (default: from a memory budget)",
    )
    return parser


main = common.workload_cli(NAME, arg_parser, run_workload, report, BUILDERS)

if __name__ == "__main__":
    raise SystemExit(main())
