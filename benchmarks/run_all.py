"""Run every workload (W1-W4) and print all tables.

Each case of each workload runs in its own process (see ``benchmarks/common.py``).
Results go to ``benchmarks/results/<workload>.json`` and ``all.json`` (with a
``-quick`` suffix under ``--quick``).

Usage:
    python benchmarks/run_all.py              # full sizes (takes a long time on CPU)
    python benchmarks/run_all.py --quick      # tiny sizes, a smoke test
    python benchmarks/run_all.py --only w1,w2
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

try:
    from benchmarks import common, w1_linear, w2_bnn, w3_effect, w4_memory
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    import common  # type: ignore[no-redef]
    import w1_linear  # type: ignore[no-redef]
    import w2_bnn  # type: ignore[no-redef]
    import w3_effect  # type: ignore[no-redef]
    import w4_memory  # type: ignore[no-redef]

FULL: dict[str, dict[str, Any]] = {
    "w1": {"n": 1_000_000},
    "w2": {"n": 20_000},
    "w3": {"n": 1_000_000},
    "w4": {"sizes": list(w4_memory.SIZES)},
}
QUICK: dict[str, dict[str, Any]] = {
    "w1": {"n": 20_000},
    "w2": {"n": 2_000, "train_rows": 2_000},
    "w3": {"n": 20_000},
    "w4": {"sizes": [10_000, 100_000]},
}
WORKLOADS: dict[str, tuple[Callable[..., dict[str, Any]], Callable[[dict[str, Any]], str]]] = {
    "w1": (w1_linear.run_workload, w1_linear.report),
    "w2": (w2_bnn.run_workload, w2_bnn.report),
    "w3": (w3_effect.run_workload, w3_effect.report),
    "w4": (w4_memory.run_workload, w4_memory.report),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.base_arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--only", default=",".join(WORKLOADS), help="e.g. w1,w3")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    suffix = "-quick" if args.quick else ""
    machine = common.machine_info()
    print(common.describe_machine(machine), flush=True)
    everything: dict[str, Any] = {"machine": machine, "command": " ".join(sys.argv)}
    for name in [w for w in args.only.split(",") if w]:
        run, report = WORKLOADS[name]
        payload = run(
            reps=args.reps,
            draws=args.draws,
            workdir=args.workdir,
            timeout=args.timeout,
            **sizes[name],
        )
        payload.update(machine=machine, finished_at=common.timestamp())
        everything[name] = payload
        print()
        print(report(payload), flush=True)
        if not args.no_save:
            common.save_results(f"{payload['workload']}{suffix}", payload)
    if not args.no_save:
        path = common.save_results(f"all{suffix}", everything)
        print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
