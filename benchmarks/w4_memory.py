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

import argparse
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


def run_workload(args: argparse.Namespace) -> dict[str, Any]:
    """Run the W1 persisted-predict case once per size, each in its own process."""
    shared = common.pick(args, "reps", "draws", "workdir", "batch_size", "return_sites")
    results: dict[str, dict[str, Any]] = {}
    for n in args.sizes:
        params = {"n": n, **shared}
        need = raw_output_bytes(n, args.draws, args.return_sites)
        free = shutil.disk_usage(args.workdir or tempfile.gettempdir()).free
        if need > 0.95 * free and not args.force:
            results[str(n)] = {
                "status": "skipped",
                "params": params,
                "reason": f"raw output {need / common.GB:.0f} GB > {free / common.GB:.0f} GB "
                "free in the output folder (use --workdir, --return-sites y or --force)",
            }
            continue
        results[str(n)] = common.run_case(w1_linear.NAME, args.impl, timeout=args.timeout, **params)
    params = common.pick(
        args, "sizes", "reps", "draws", "impl", "return_sites", "workdir", "batch_size"
    )
    return {"workload": NAME, "params": params, "results": results}


def report(payload: dict[str, Any]) -> str:
    """Markdown table, RSS ratios and linearity of time for a W4 payload."""
    params = payload["params"]
    results = payload["results"]
    x_on_disk = params["impl"] == "dopax_zarr_input"

    def x_gib(key: str) -> float:
        # With --impl dopax_zarr_input, X stays on disk: none of it is resident.
        return 0.0 if x_on_disk else int(key) * w1_linear.NUM_FEATURES * 4 / common.GIB

    def net_of(key: str, res: dict[str, Any]) -> float | None:
        rss = common.rss_of(res)
        return None if rss is None else rss - x_gib(key)

    def per_million(key: str, res: dict[str, Any]) -> float | None:
        sec = common.seconds_of(res)
        return None if sec is None else sec / int(key) * 1e6

    columns: list[common.Column] = [
        common.SECONDS,
        ("s per 1M rows", per_million),
        common.SETUP_RSS,
        common.PEAK_RSS,
        ("X GiB", lambda key, _res: x_gib(key)),
        ("RSS - X GiB", net_of),
        common.DISK_GB,
        common.STATUS,
    ]
    ok: list[tuple[int, float, float, float]] = []  # n, seconds, rss, rss net of X
    for key, res in results.items():
        sec, rss, net = common.seconds_of(res), common.rss_of(res), net_of(key, res)
        if sec is not None and rss is not None and net is not None:
            ok.append((int(key), sec, rss, net))
    targets = []
    if len(ok) >= 2:
        (n0, s0, r0, net0), (n1, s1, r1, net1) = ok[0], ok[-1]
        targets += [
            common.target_line(f"peak RSS({n1:,}) / peak RSS({n0:,})", r1 / r0, TARGET_RSS_RATIO),
            common.target_line(
                f"(RSS - X)({n1:,}) / (RSS - X)({n0:,})", net1 / net0, TARGET_RSS_RATIO
            ),
            f"- time grows linearly: time ratio {s1 / s0:.3g} for a row ratio of "
            f"{n1 / n0:.3g} (time per row ratio {(s1 / n1) / (s0 / n0):.3g})",
        ]
    else:
        targets.append("- fewer than two sizes ran: no ratio")
    return common.report_text(
        f"### W4 memory: {params['impl']} persisted predict of W1 "
        f"({', '.join(params['return_sites'])}), {params['draws']:,} draws",
        common.case_table(results, columns, "rows", int),
        results,
        notes=[
            "",
            "Peak RSS is that of the whole worker process (JAX runtime, fit, X included);",
            "'setup RSS' is its peak before the first predict call (after the fit and making X);",
            "'RSS - X' is peak RSS minus the bytes of the input array X (n x 10 float32)",
            "held in memory (none when X is read from Zarr).",
        ],
        targets=targets,
    )


def arg_parser() -> argparse.ArgumentParser:
    parser = common.base_arg_parser(__doc__.splitlines()[0], sizes=SIZES, batch_size=None)
    parser.add_argument("--impl", default="dopax", choices=["dopax", "dopax_zarr_input", "aimz"])
    parser.add_argument(
        "--return-sites",
        type=common.names,
        default=list(w1_linear.SITES),
        help="comma-separated sites",
    )
    parser.add_argument("--force", action="store_true", help="run sizes despite low disk space")
    return parser


main = common.workload_cli(NAME, arg_parser, run_workload, report)

if __name__ == "__main__":
    raise SystemExit(main())
