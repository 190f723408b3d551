"""Throughput of one fitted model serving ``predict_on_batch`` from many threads.

A web server's thread pool calls one model at once. This measures calls per
second of ``predict_on_batch`` (a request of ``--rows`` rows, ``--draws``
draws, the linear kernel of W1) made one after another in one thread, and by
``--threads`` threads at once, after every shape has compiled; NumPyro's
``Predictive`` on the same posterior, one thread, is the reference.

``python benchmarks/threads.py --rows 2000 --draws 200 --calls 24 --threads 8``
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from typing import Any

try:
    from benchmarks import common
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    import common  # type: ignore[no-redef]

NAME = "threads"
TARGET_THREADS_VS_SEQUENTIAL = 1.0


def run_workload(args: argparse.Namespace) -> dict[str, Any]:
    """Calls per second of each case in every round, in this process."""
    import jax
    import numpy as np
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import SVI, Predictive, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal
    from numpyro.optim import Adam

    from dopax import ImpactModel

    def kernel(X: Any, y: Any = None) -> None:
        beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
        sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
        with numpyro.plate("obs", X.shape[0]):
            mu = numpyro.deterministic("mu", X @ beta)
            numpyro.sample("y", dist.Normal(mu, sigma), obs=y)

    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.rows, 10)).astype(np.float32)
    posterior = {
        "beta": rng.normal(size=(args.draws, 10)).astype(np.float32),
        "sigma": np.abs(rng.normal(size=args.draws)).astype(np.float32) + 0.5,
    }
    model = ImpactModel(
        kernel, jax.random.key(0), SVI(kernel, AutoNormal(kernel), Adam(0.01), Trace_ELBO())
    )
    model.set_posterior_sample(posterior)
    key = jax.random.key(1)

    def dopax_call() -> None:
        out = model.predict_on_batch(X, rng_key=key, return_datatree=False)
        np.asarray(out["y"])

    predictive = Predictive(kernel, posterior_samples=posterior)
    run = jax.jit(lambda k, x: predictive(k, x))

    def predictive_call() -> None:
        out = run(key, X)
        np.asarray(out["y"])

    def sequential(call: Any) -> float:
        start = time.perf_counter()
        for _ in range(args.calls):
            call()
        return args.calls / (time.perf_counter() - start)

    def threaded(call: Any) -> float:
        per = args.calls // args.threads
        barrier = threading.Barrier(args.threads + 1)

        def work() -> None:
            barrier.wait()
            for _ in range(per):
                call()

        threads = [threading.Thread(target=work) for _ in range(args.threads)]
        for t in threads:
            t.start()
        barrier.wait()
        start = time.perf_counter()
        for t in threads:
            t.join()
        return per * args.threads / (time.perf_counter() - start)

    dopax_call()  # compile
    predictive_call()
    rounds = []
    for _ in range(args.rounds):
        rounds.append(
            {
                "predictive_sequential": sequential(predictive_call),
                "dopax_sequential": sequential(dopax_call),
                "dopax_threads": threaded(dopax_call),
            }
        )
    med = {k: sorted(r[k] for r in rounds)[len(rounds) // 2] for k in rounds[0]}
    return {
        "workload": NAME,
        "rows": args.rows,
        "draws": args.draws,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "calls_per_s_median": med,
        "threads_over_sequential": med["dopax_threads"] / med["dopax_sequential"],
        "sequential_over_predictive": med["dopax_sequential"] / med["predictive_sequential"],
        "rounds": rounds,
    }


def report(payload: dict[str, Any]) -> str:
    """The figures as JSON, then a table of calls per second and the target."""
    added = ("workload", "machine", "command", "finished_at")  # by run_workload and publish
    figures = {k: v for k, v in payload.items() if k not in added}
    med = payload["calls_per_s_median"]
    labels = {
        "predictive_sequential": "NumPyro Predictive, jitted, one thread",
        "dopax_sequential": "dopax, one thread",
        "dopax_threads": f"dopax, {payload['threads']} threads",
    }
    rows = [
        [label, med[key], common.ratio(med[key], med["dopax_sequential"])]
        for key, label in labels.items()
    ]
    each = ", ".join(f"{r['dopax_threads'] / r['dopax_sequential']:.3g}" for r in payload["rounds"])
    gain = payload["threads_over_sequential"]
    verdict = "met" if gain >= TARGET_THREADS_VS_SEQUENTIAL else "NOT met"
    return "\n".join(
        [
            json.dumps(figures, indent=2, default=str),
            "",
            f"Calls per second of {payload['rows']:,} rows x {payload['draws']:,} draws, "
            f"median of {len(payload['rounds'])} rounds:",
            "",
            common.markdown_table(["case", "calls/s", "x sequential dopax"], rows),
            "",
            f"Target: {payload['threads']} threads' calls/s >= "
            f"{TARGET_THREADS_VS_SEQUENTIAL:g} x one thread's: {gain:.3g} ({verdict}; "
            f"rounds: {each})",
        ]
    )


def arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2000)
    common.add_options(parser, draws=200)
    parser.add_argument("--calls", type=int, default=24, help="calls in all, per case")
    parser.add_argument("--threads", type=int, default=8)
    common.add_options(
        parser,
        helps={"rounds": "rounds of all cases; the median of each case is reported"},
        rounds=3,
        name=None,
        no_save=False,
    )
    return parser


main = common.workload_cli(NAME, arg_parser, run_workload, report)

if __name__ == "__main__":
    raise SystemExit(main())
