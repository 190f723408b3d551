"""W4: memory does not grow with data.

The W1 ``dopax`` case (persisted ``predict`` of ``y`` and ``mu``, 1,000 draws)
at several row counts, each in its own process. Reports time, time per row and
peak RSS per size, and the ratio of peak RSS at the largest size to the
smallest. The input array ``X`` (n x 10 float32: 400 MB at 10M rows) is part
of the process, not of dopax's working memory, so RSS is also reported minus
``X``'s bytes.

A size whose raw output (n x draws x 4 bytes per site) would not fit in the free
space of the output folder is skipped unless ``--force`` is given; ``--workdir``
picks another disk, ``--return-sites y`` halves the output.

Usage:
    python benchmarks/w4_memory.py --sizes 100000,1000000,10000000 --reps 3
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

try:
    from benchmarks import common, w1_linear
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    import common  # type: ignore[no-redef]
    import w1_linear  # type: ignore[no-redef]

NAME = "w4_memory"
SIZES = (100_000, 1_000_000, 10_000_000)
TARGET_RSS_RATIO = 1.1


def raw_output_bytes(n: int, draws: int, sites: Sequence[str]) -> int:
    """Uncompressed float32 bytes of the persisted output."""
    return n * draws * 4 * len(sites)


def run_workload(
    *,
    sizes: Sequence[int] = SIZES,
    reps: int = 3,
    draws: int = 1000,
    impl: str = "dopax",
    return_sites: Sequence[str] = w1_linear.SITES,
    workdir: str | None = None,
    batch_size: int | None = None,
    force: bool = False,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run the W1 persisted-predict case once per size, each in its own process."""
    results: dict[str, dict[str, Any]] = {}
    for n in sizes:
        params = {
            "n": n,
            "reps": reps,
            "draws": draws,
            "workdir": workdir,
            "batch_size": batch_size,
            "return_sites": list(return_sites),
        }
        need = raw_output_bytes(n, draws, return_sites)
        free = shutil.disk_usage(workdir or tempfile.gettempdir()).free
        if need > 0.95 * free and not force:
            results[str(n)] = {
                "status": "skipped",
                "params": params,
                "reason": f"raw output {need / common.GB:.0f} GB > {free / common.GB:.0f} GB "
                "free in the output folder (use --workdir, --return-sites y or --force)",
            }
            continue
        results[str(n)] = common.run_case(w1_linear.NAME, impl, timeout=timeout, **params)
    return {
        "workload": NAME,
        "params": {
            "sizes": list(sizes),
            "reps": reps,
            "draws": draws,
            "impl": impl,
            "return_sites": list(return_sites),
            "workdir": workdir,
            "batch_size": batch_size,
        },
        "results": results,
    }


def report(payload: dict[str, Any]) -> str:
    """Markdown table, RSS ratios and linearity of time for a W4 payload."""
    params = payload["params"]
    results = payload["results"]
    x_on_disk = params["impl"] == "dopax_zarr_input"
    rows = []
    ok: list[tuple[int, float, float, float]] = []  # n, seconds, rss, rss net of X
    for key, res in results.items():
        n = int(key)
        sec = common.seconds_of(res)
        rss = common.rss_of(res)
        # With --impl dopax_zarr_input, X stays on disk: none of it is resident.
        x_gib = 0.0 if x_on_disk else n * w1_linear.NUM_FEATURES * 4 / common.GIB
        net = None if rss is None else rss - x_gib
        disk = res.get("extra", {}).get("disk_bytes") if sec is not None else None
        rows.append(
            [
                n,
                sec,
                None if sec is None else sec / n * 1e6,
                common.setup_rss_of(res),
                rss,
                x_gib,
                net,
                None if disk is None else disk / common.GB,
                res.get("status"),
            ]
        )
        if sec is not None and rss is not None and net is not None:
            ok.append((n, sec, rss, net))
    headers = [
        "rows",
        "median s",
        "s per 1M rows",
        "setup RSS GiB",
        "peak RSS GiB",
        "X GiB",
        "RSS - X GiB",
        "disk GB",
        "status",
    ]
    lines = [
        f"### W4 memory: {params['impl']} persisted predict of W1 "
        f"({', '.join(params['return_sites'])}), {params['draws']:,} draws",
        "",
        common.markdown_table(headers, rows),
        *common.status_notes(results),
        "",
        "Peak RSS is that of the whole worker process (JAX runtime, fit, X included);",
        "'setup RSS' is its peak before the first predict call (after the fit and making X);",
        "'RSS - X' is peak RSS minus the bytes of the input array X (n x 10 float32)",
        "held in memory (none when X is read from Zarr).",
        "",
        "Targets:",
    ]
    if len(ok) >= 2:
        (n0, s0, r0, net0), (n1, s1, r1, net1) = ok[0], ok[-1]
        lines += [
            common.target_line(f"peak RSS({n1:,}) / peak RSS({n0:,})", r1 / r0, TARGET_RSS_RATIO),
            common.target_line(
                f"(RSS - X)({n1:,}) / (RSS - X)({n0:,})", net1 / net0, TARGET_RSS_RATIO
            ),
            f"- time grows linearly: time ratio {s1 / s0:.3g} for a row ratio of "
            f"{n1 / n0:.3g} (time per row ratio {(s1 / n1) / (s0 / n0):.3g})",
        ]
    else:
        lines.append("- fewer than two sizes ran: no ratio")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.base_arg_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default=",".join(str(s) for s in SIZES),
        help="comma-separated row counts",
    )
    parser.add_argument("--impl", default="dopax", choices=["dopax", "dopax_zarr_input", "aimz"])
    parser.add_argument(
        "--return-sites", default=",".join(w1_linear.SITES), help="comma-separated sites"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="predict batch_size")
    parser.add_argument("--force", action="store_true", help="run sizes despite low disk space")
    args = parser.parse_args(argv)
    common.use_dopax_settings(args.set)
    machine = common.machine_info()
    payload = run_workload(
        sizes=[int(s) for s in args.sizes.split(",") if s],
        reps=args.reps,
        draws=args.draws,
        impl=args.impl,
        return_sites=[s for s in args.return_sites.split(",") if s],
        workdir=args.workdir,
        batch_size=args.batch_size,
        force=args.force,
        timeout=args.timeout,
    )
    common.publish(payload, machine, args, NAME, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
