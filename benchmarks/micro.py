"""Micro-measurements behind engine choices: Threefry, I/O, codecs, order statistics, copies.

``python benchmarks/micro.py rng`` times 2**24 random words and normal draws
from JAX's ``threefry2x32`` primitive / ``jax.random.normal`` against dopax's
unrolled Threefry (bit-identical output, checked here too).

``python benchmarks/micro.py write [--gib 2] [--folder DIR]`` writes the same
bytes as 32 MB files through the page cache and with ``O_DIRECT``
(:class:`dopax.streaming.fileio.FileWriter`) and reports wall and CPU seconds.

``python benchmarks/micro.py codec`` encodes chunks of integer and boolean draws
(10,000,000 values each: Bernoulli, Poisson, categorical) with every codec
``ExecutionConfig.compressor`` offers, through the encoders the writer threads
use, and reports nanoseconds per value and the stored fraction of the raw bytes.

``python benchmarks/micro.py order [--rows 5592] [--draws 1000] [--probs 0.03,0.97]``
times, on one block of draws (``summarize``'s automatic block for W1 by
default), what a per-row summary costs beside drawing the block: the draws
themselves (dopax's fused Threefry normals), their mean and sd, the order
statistics of the quantiles ``--probs`` (a 94% equal-tailed interval by
default) counted (:func:`dopax.reductions.order.order_statistics`) and read
from ``top_k`` tails, and NumPy's ``partition`` of the same ranks.

``python benchmarks/micro.py copy [--rows 400000] [--draws 200] [--chunks 16,64]``
measures what copying a large posterior into a result costs in memory: a
``predict`` of a kernel with a per-row latent site (its posterior draws x
rows, 320 MB by default, copied into the result's ``posterior`` group by a
background thread beside the blocks), for each ``static_chunk_bytes`` in MiB,
each in a process of its own. It reports the peak resident memory above the
process's before the call (sampled every 5 ms), against the call's memory
budget.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

try:
    from benchmarks import common
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    import common  # type: ignore[no-redef]


def _timed(fn: Callable[[], Any], reps: int = 5) -> tuple[float, float]:
    """Median wall seconds and mean CPU seconds of ``fn`` over ``reps`` calls."""
    walls = []
    c0 = os.times()
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - start)
    c1 = os.times()
    cpu = (c1.user + c1.system - c0.user - c0.system) / reps
    return sorted(walls)[len(walls) // 2], cpu


def _counters(off: Any, n: int) -> tuple[Any, Any]:
    import jax.numpy as jnp
    from jax import lax

    return off + lax.iota(jnp.uint32, n), jnp.zeros(n, jnp.uint32)


def _fused_bits(k1: Any, k2: Any, off: Any, n: int) -> Any:
    from dopax.sampling.rng import threefry2x32

    a, b = threefry2x32(k1, k2, *_counters(off, n))
    return a ^ b


def _fused_normal(k1: Any, k2: Any, off: Any, n: int) -> Any:
    """``n`` standard normal draws from dopax's fused Threefry words."""
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    bits = _fused_bits(k1, k2, off, n)
    unit = lax.bitcast_convert_type((bits >> jnp.uint32(9)) | jnp.uint32(0x3F800000), jnp.float32)
    lo = np.nextafter(np.float32(-1.0), np.float32(0.0))
    return np.sqrt(2.0).astype(np.float32) * lax.erf_inv(jnp.maximum(lo, (unit - 1.0) * 2 - 1))


def rng() -> None:
    import jax
    import jax.numpy as jnp
    from jax.extend import random as jex_random

    n = 1 << 24
    u32 = jnp.uint32

    @jax.jit
    def primitive_bits(k1: Any, k2: Any, off: Any) -> Any:
        a, b = jex_random.threefry2x32_p.bind(k1, k2, *_counters(off, n))
        return a ^ b

    fused_bits = jax.jit(functools.partial(_fused_bits, n=n))
    fused_normal = jax.jit(functools.partial(_fused_normal, n=n))

    @jax.jit
    def jax_normal(key: Any) -> Any:
        return jax.random.normal(key, (n,))

    args = (u32(1), u32(2), u32(5))
    same = bool(jnp.all(primitive_bits(*args) == fused_bits(*args)))
    rows = []
    for name, fn in (
        ("threefry2x32 primitive, 2**24 words", lambda: primitive_bits(*args)),
        ("dopax fused Threefry, 2**24 words", lambda: fused_bits(*args)),
        ("jax.random.normal, 2**24 draws", lambda: jax_normal(jax.random.key(0))),
        ("dopax fused bits -> normal, 2**24 draws", lambda: fused_normal(*args)),
    ):
        jax.block_until_ready(fn())
        wall, cpu = _timed(lambda fn=fn: jax.block_until_ready(fn()))
        rows.append((name, wall, cpu))
    print(f"bit-identical words: {same}")
    print(common.markdown_table(["case", "median s", "CPU s"], rows))


def order(rows: int, draws: int, probs: Sequence[float]) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dopax.reductions.order import order_statistics, quantile_plan, tail_sizes, tails

    u32 = jnp.uint32
    ranks = []
    for p in probs:
        plan = quantile_plan(draws, p)
        ranks += [plan.below, plan.above]

    @jax.jit
    def drawn(off: Any) -> Any:
        return _fused_normal(u32(1), u32(2), off, rows * draws).reshape(draws, rows) * 2 + 1

    x = drawn(u32(0))
    host = np.asarray(x)
    counted = jax.jit(lambda v: [order_statistics(v, ranks).rank(r) for r in ranks])
    by_tails = jax.jit(
        lambda v: [tails(jnp.moveaxis(v, 0, -1), *tail_sizes(draws, ranks)).rank(r) for r in ranks]
    )
    same = all(
        np.array_equal(a, b) for a, b in zip(counted(x), by_tails(x), strict=True)
    ) and np.array_equal(np.asarray(counted(x)), np.partition(host, ranks, axis=0)[ranks])
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("draws (fused Threefry normals)", lambda: drawn(u32(7))),
        ("mean and sd", functools.partial(jax.jit(lambda v: (v.mean(0), v.std(0))), x)),
        ("order statistics, counted", functools.partial(counted, x)),
        ("order statistics, top_k tails", functools.partial(by_tails, x)),
        ("NumPy partition (host)", lambda: np.partition(host, ranks, axis=0)),
    ]
    rows_out = []
    for name, fn in cases:
        jax.block_until_ready(fn())
        wall, cpu = _timed(lambda fn=fn: jax.block_until_ready(fn()))
        rows_out.append((name, wall, cpu, wall * 1e9 / (rows * draws)))
    print(f"{rows:,} rows x {draws:,} draws; ranks {ranks}; all three equal: {same}")
    print(common.markdown_table(["case", "median s", "CPU s", "ns per draw"], rows_out))


def write(gib: float, folder: str | None) -> None:
    import numpy as np

    from dopax.streaming.fileio import FileWriter

    chunk = np.random.default_rng(0).integers(0, 255, size=32 * 2**20, dtype=np.uint8)
    count = max(1, int(gib * 2**30 // chunk.size))
    base = tempfile.mkdtemp(prefix="dopax-write-", dir=folder)
    print(f"{count} files of 32 MB in {base}")
    rows = []
    try:
        for label, direct in (("page cache", False), ("O_DIRECT", True)):
            writer = FileWriter(direct=direct)
            out = os.path.join(base, label.replace(" ", "_"))
            os.mkdir(out)
            c0 = os.times()
            start = time.perf_counter()
            for i in range(count):
                writer.write(Path(out) / f"chunk{i}", chunk)
            wall = time.perf_counter() - start
            c1 = os.times()
            cpu = c1.user + c1.system - c0.user - c0.system
            gbs = count * chunk.size / 1e9 / wall
            mode = label + ("" if writer.direct == direct else " (fell back)")
            rows.append((mode, wall, cpu, gbs))
            shutil.rmtree(out)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(common.markdown_table(["mode", "wall s", "CPU s", "GB/s"], rows))


def codec(values: int) -> None:
    import numpy as np

    from dopax.config import ExecutionConfig
    from dopax.streaming.fileio import CRC32C
    from dopax.streaming.sinks.codecs import chunk_encoder, codec_for, compressors_for

    rng = np.random.default_rng(0)
    shape = (1, 500, max(1, values // 500))
    data: dict[str, np.ndarray] = {
        "Bernoulli(0.3), int32": (rng.random(shape) < 0.3).astype(np.int32),
        "Poisson(2), int64": rng.poisson(2.0, shape).astype(np.int64),
        "Poisson(20), int32": rng.poisson(20.0, shape).astype(np.int32),
        "categorical(10), int32": rng.integers(0, 10, shape).astype(np.int32),
        "Bernoulli(0.3), bool": rng.random(shape) < 0.3,
    }
    level = ExecutionConfig().compression_level
    print(f"chunks of {int(np.prod(shape)):,} values; compression_level={level}")
    rows = []
    for label, array in data.items():
        auto = codec_for(ExecutionConfig(), array.dtype)
        for name in ("zstd", "lz4", "bitshuffle-lz4"):
            encode = chunk_encoder(compressors_for(name, level, array.dtype))
            encode(array)  # warm up
            wall, _ = _timed(functools.partial(encode, array))
            # the stored chunk: the compressed bytes, then the writer's 4-byte checksum
            pieces = encode(array)
            stored = sum(4 if p is CRC32C else memoryview(p).nbytes for p in pieces)
            ratio = stored / array.nbytes
            mark = " (auto)" if name == auto else ""
            rows.append((label, name + mark, wall * 1e9 / array.size, ratio))
    print(common.markdown_table(["draws", "codec", "ns per value", "stored / raw"], rows))


def copy(rows: int, draws: int, chunks: Sequence[int]) -> None:
    import subprocess
    import sys

    from dopax.config import ExecutionConfig

    out = []
    for mib in chunks:
        done = subprocess.run(
            [sys.executable, __file__, "copy-one", str(rows), str(draws), str(mib)],
            capture_output=True,
            text=True,
            check=True,
        )
        out.append((mib, *(float(v) for v in done.stdout.split()[-2:])))
    budget = ExecutionConfig().budget_bytes() / 2**20
    print(f"{rows:,} rows x {draws} draws of a per-row latent site; budget {budget:.0f} MiB")
    print(common.markdown_table(["static_chunk_bytes (MiB)", "peak above before (MiB)", "s"], out))


def _copy_one(rows: int, draws: int, mib: int) -> None:
    import threading

    import jax
    import numpy as np
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal
    from numpyro.optim import Adam

    from dopax import ImpactModel
    from dopax.config import config_context

    def kernel(X: Any, y: Any = None) -> None:
        a = numpyro.sample("a", dist.Normal(0.0, 1.0))
        with numpyro.plate("obs", X.shape[0]):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0))
            numpyro.sample("y", dist.Normal(a + X[:, 0] + z, 1.0), obs=y)

    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, 1)).astype(np.float32)
    model = ImpactModel(
        kernel, jax.random.key(0), SVI(kernel, AutoNormal(kernel), Adam(0.01), Trace_ELBO())
    )
    model.set_posterior_sample(
        {
            "a": rng.normal(size=draws).astype(np.float32),
            "z": rng.normal(size=(draws, rows)).astype(np.float32),
        }
    )

    def resident() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    peak, running = [0], [True]

    def watch() -> None:
        while running[0]:
            peak[0] = max(peak[0], resident())
            time.sleep(0.005)

    with config_context(static_chunk_bytes=mib * 2**20):
        base = tempfile.mkdtemp(prefix="dopax-copy-")
        try:
            model.predict(X, progress=False, output_dir=base)  # compiles; memory settles
            before = resident()
            watcher = threading.Thread(target=watch)
            watcher.start()
            start = time.perf_counter()
            model.predict(X, progress=False, output_dir=base)
            wall = time.perf_counter() - start
            running[0] = False
            watcher.join()
        finally:
            shutil.rmtree(base, ignore_errors=True)
    print((peak[0] - before) / 2**20, wall)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("rng", help="Threefry and normal draws")
    w = sub.add_parser("write", help="page-cache vs O_DIRECT writes")
    w.add_argument("--gib", type=float, default=2.0)
    w.add_argument("--folder", default=None)
    c = sub.add_parser("codec", help="codecs on integer and boolean draws")
    c.add_argument("--values", type=int, default=10_000_000)
    o = sub.add_parser("order", help="a block's draws against its per-row order statistics")
    o.add_argument("--rows", type=int, default=5592)
    o.add_argument("--draws", type=int, default=1000)
    o.add_argument("--probs", type=lambda v: [float(p) for p in v.split(",")], default=[0.03, 0.97])
    k = sub.add_parser("copy", help="memory of copying a large posterior into a result")
    k.add_argument("--rows", type=int, default=400_000)
    k.add_argument("--draws", type=int, default=200)
    k.add_argument("--chunks", type=lambda v: [int(c) for c in v.split(",")], default=[16, 64])
    one = sub.add_parser("copy-one")  # one measurement of ``copy``, in its own process
    for name in ("rows", "draws", "mib"):
        one.add_argument(name, type=int)
    args = parser.parse_args(argv)
    if args.what == "rng":
        rng()
    elif args.what == "order":
        order(args.rows, args.draws, args.probs)
    elif args.what == "codec":
        codec(args.values)
    elif args.what == "copy":
        copy(args.rows, args.draws, args.chunks)
    elif args.what == "copy-one":
        _copy_one(args.rows, args.draws, args.mib)
    else:
        write(args.gib, args.folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
