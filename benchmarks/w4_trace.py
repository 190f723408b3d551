"""Trace resident memory through one W1 persisted ``predict`` (W4 diagnostics).

``python benchmarks/w4_trace.py --n 10000000 [--input zarr|numpy]`` predicts
W1's ``y`` once on 20,000 rows to warm up, then once on ``n`` rows. During
that call a thread samples the process's RSS every half millisecond together
with the number of output blocks alive (handed to the writers and not yet
freed), and the script prints:

- RSS by number of blocks alive (median, 99th percentile, maximum), relative
  to RSS before the call;
- the blocks at which the process's peak rose;
- at the highest sample, which memory mappings had grown since before the call
  (``/proc/self/smaps``: output blocks are the large anonymous mappings, heap
  arenas of other threads are 64 MiB-aligned ones, the writers' direct-I/O
  buffers are ``/dev/zero``).

Linux only.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

try:
    from benchmarks import common, w1_linear
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    import common  # type: ignore[no-redef]
    import w1_linear  # type: ignore[no-redef]

MIB = 2**20


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / MIB


def _max_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _mappings() -> dict[tuple[str, str], float]:
    """Resident MiB of each mapping with at least 1 MiB resident, by (start, name)."""
    out: dict[tuple[str, str], float] = {}
    current: tuple[str, str] | None = None
    with open("/proc/self/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5 and ":" in parts[3]:
                current = (parts[0].split("-")[0], parts[5] if len(parts) > 5 else "[anon]")
            elif parts[0] == "Rss:" and current is not None:
                mib = int(parts[1]) / 1024
                if mib >= 1:
                    out[current] = mib
    return out


class _Sampler:
    """Samples RSS and the blocks alive; snapshots the mappings at a new high."""

    def __init__(self, period: float) -> None:
        self.period = period
        self.alive = 0
        self.block = 0
        self.samples: list[tuple[float, int, int]] = []
        self.peak: tuple[float, int, dict[tuple[str, str], float]] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def track(self, block: Any) -> None:
        with self._lock:
            self.alive += 1
        weakref.finalize(block, self._freed)

    def _freed(self) -> None:
        with self._lock:
            self.alive -= 1

    def _run(self) -> None:
        high = 0.0
        while not self._stop.is_set():
            rss = _rss_mib()
            self.samples.append((rss, self.alive, self.block))
            if rss > high + 4:
                high = rss
                self.peak = (rss, self.alive, _mappings())
            time.sleep(self.period)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_options(parser, n=10_000_000)
    parser.add_argument("--input", choices=["zarr", "numpy"], default="zarr")
    common.add_options(parser, workdir=None)
    parser.add_argument("--period", type=float, default=0.0005, help="seconds between samples")
    args = parser.parse_args(argv)
    if not sys.platform.startswith("linux"):
        parser.error("reads /proc: Linux only")

    import jax

    import dopax.execution.engine as run_module

    work = common.make_temp_dir(args.workdir, "dopax-w4trace-")
    try:
        X: Any = (
            w1_linear.make_X_zarr(args.n, 10, str(work))
            if args.input == "zarr"
            else common.make_X(args.n, 10)
        )
        model = common.new_impact_model("dopax", w1_linear.kernel, w1_linear.posterior(1000))
        key = jax.random.key(2)
        sites = ("y",)
        model.predict(
            X[:20000], rng_key=key, output_dir=f"{work}/warm", progress=False, return_sites=sites
        )
        sampler = _Sampler(args.period)
        peaks: list[tuple[int, float]] = []
        original = run_module.run_blocks

        def traced(job: Any, blocks: Any, consume: Any, **kwargs: Any) -> None:
            inner = kwargs.pop("on_block", None)

            def consume_tracked(block: Any, outputs: dict[str, Any]) -> None:
                for value in outputs.values():
                    sampler.track(value)
                consume(block, outputs)

            def on_block(rows: int, draws: int) -> None:
                sampler.block += 1
                peaks.append((sampler.block, _max_mib()))
                if inner is not None:
                    inner(rows, draws)

            original(job, blocks, consume_tracked, on_block=on_block, **kwargs)

        run_module.run_blocks = traced  # type: ignore[assignment]
        before_rss = _rss_mib()
        before_map = _mappings()
        before_peak = _max_mib()
        start = time.perf_counter()
        with sampler:
            model.predict(
                X, rng_key=key, output_dir=f"{work}/out", progress=False, return_sites=sites
            )
        print(
            f"{args.n:,} rows ({args.input} input) in {time.perf_counter() - start:.1f} s, "
            f"{sampler.block} blocks; RSS before the call {before_rss:.0f} MiB, "
            f"peak before {before_peak:.0f} MiB, peak after {_max_mib():.0f} MiB"
        )
        by_alive: dict[int, list[float]] = defaultdict(list)
        for rss, alive, _ in sampler.samples:
            by_alive[alive].append(rss - before_rss)
        print("MiB above RSS before the call, by output blocks alive:")
        for alive in sorted(by_alive):
            values = sorted(by_alive[alive])
            print(
                f"  {alive} alive: {len(values)} samples, median {statistics.median(values):.0f}, "
                f"p99 {values[int(0.99 * (len(values) - 1))]:.0f}, max {values[-1]:.0f}"
            )
        last = before_peak
        for block, peak in peaks:
            if peak > last + 5:
                print(f"  block {block}: peak {peak:.0f} MiB")
                last = peak
        if sampler.peak is not None:
            rss, alive, now = sampler.peak
            print(
                f"Mappings grown by 3 MiB or more at the highest sample ({rss:.0f} MiB, "
                f"{alive} blocks alive):"
            )
            for mapping in sorted(set(now) | set(before_map)):
                grown = now.get(mapping, 0.0) - before_map.get(mapping, 0.0)
                if grown >= 3:
                    print(f"  {mapping[1]} at {mapping[0]}: +{grown:.0f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
