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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--calls", type=int, default=24, help="calls in all, per case")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

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
    print(
        json.dumps(
            {
                "rows": args.rows,
                "draws": args.draws,
                "threads": args.threads,
                "cpus": os.cpu_count(),
                "calls_per_s_median": med,
                "threads_over_sequential": med["dopax_threads"] / med["dopax_sequential"],
                "sequential_over_predictive": med["dopax_sequential"]
                / med["predictive_sequential"],
                "rounds": rounds,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
