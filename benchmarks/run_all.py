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
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

try:
    from benchmarks import common, w1_linear, w2_bnn, w3_effect, w4_memory
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    import common  # type: ignore[no-redef]
    import w1_linear  # type: ignore[no-redef]
    import w2_bnn  # type: ignore[no-redef]
    import w3_effect  # type: ignore[no-redef]
    import w4_memory  # type: ignore[no-redef]

#: Sizes of ``--quick``; a full run takes each workload's own defaults.
QUICK: dict[str, dict[str, Any]] = {
    "w1": {"n": 20_000},
    "w2": {"n": 2_000, "train_rows": 2_000},
    "w3": {"n": 20_000},
    "w4": {"sizes": [10_000, 100_000]},
}
WORKLOADS: dict[str, ModuleType] = {
    "w1": w1_linear,
    "w2": w2_bnn,
    "w3": w3_effect,
    "w4": w4_memory,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = common.base_arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--only", type=common.names, default=list(WORKLOADS), help="e.g. w1,w3")
    args = parser.parse_args(argv)
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    common.use_dopax_settings(args.set)
    sizes = QUICK if args.quick else {}
    suffix = "-quick" if args.quick else ""
    machine = common.machine_info()
    print(common.describe_machine(machine), flush=True)
    everything: dict[str, Any] = {"machine": machine, "command": " ".join(sys.argv)}
    for name in args.only:
        workload = WORKLOADS[name]
        options = common.options(
            workload.arg_parser(),
            **common.pick(args, "reps", "draws", "workdir", "timeout"),
            **sizes.get(name, {}),
        )
        payload = workload.run_workload(options)
        payload.update(machine=machine, finished_at=common.timestamp())
        everything[name] = payload
        print()
        print(workload.report(payload), flush=True)
        if not args.no_save:
            common.save_results(f"{payload['workload']}{suffix}", payload)
    if not args.no_save:
        path = common.save_results(f"all{suffix}", everything)
        print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
