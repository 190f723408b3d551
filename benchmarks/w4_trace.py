"""Trace peak memory block by block in one W1 persisted ``predict`` (W4 diagnostics).

``python benchmarks/w4_trace.py --n 10000000 [--input zarr|numpy]`` predicts
W1's ``y`` once to warm up, then once on ``n`` rows, recording after every
block the process's ``ru_maxrss``, its current RSS and the number of live JAX
arrays, and prints the blocks at which the peak rose.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

try:
    from benchmarks import common, w1_linear
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    import common  # type: ignore[no-redef]
    import w1_linear  # type: ignore[no-redef]


def _rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**30


def _max_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--input", choices=["zarr", "numpy"], default="zarr")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)

    import jax

    import dopax.streaming.run as run_module

    work = tempfile.mkdtemp(prefix="dopax-w4trace-", dir=args.workdir)
    try:
        X: Any = (
            w1_linear.make_X_zarr(args.n, 10, work)
            if args.input == "zarr"
            else common.make_X(args.n, 10)
        )
        model = common.new_impact_model("dopax", w1_linear.kernel, w1_linear.posterior(1000))
        key = jax.random.key(2)
        sites = ("y",)
        model.predict(
            X[:20000], rng_key=key, output_dir=f"{work}/warm", progress=False, return_sites=sites
        )
        log: list[tuple[float, float, int]] = []
        original = run_module.run_job

        def traced(job: Any, blocks: Any, emit: Any, **kwargs: Any) -> None:
            inner = kwargs.pop("on_block", None)

            def on_block(rows: int, draws: int) -> None:
                log.append((_max_gib(), _rss_gib(), len(jax.live_arrays())))
                if inner is not None:
                    inner(rows, draws)

            original(job, blocks, emit, on_block=on_block, **kwargs)

        run_module.run_job = traced
        before = _max_gib()
        start = time.perf_counter()
        model.predict(X, rng_key=key, output_dir=f"{work}/out", progress=False, return_sites=sites)
        print(
            f"{args.n:,} rows in {time.perf_counter() - start:.1f} s, {len(log)} blocks; "
            f"peak before the call {before:.3f} GiB"
        )
        last = before
        for i, (peak, rss, live) in enumerate(log):
            if peak > last + 0.005:
                print(f"block {i}: peak {peak:.3f} GiB, RSS {rss:.3f} GiB, live JAX arrays {live}")
                last = peak
        print(f"final peak {_max_gib():.3f} GiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
