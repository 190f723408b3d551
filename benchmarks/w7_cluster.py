"""W7: beyond one machine.

W1's persisted ``predict`` of ``y`` (1,000 draws) with ``X`` read from a Zarr
array on disk (chunks of 100,000 rows), three ways, each case in its own
driver process:

    single   one process, the local engine, into a local folder (the reference);
    cluster  a Dask cluster of ``--workers`` worker processes (one thread each)
             and a scheduler, each its own process, into a local folder;
    s3       the same cluster into an S3-compatible server on loopback (moto,
             started here; it keeps objects in memory, so use fewer rows).

For the cluster cases the scheduler runs as its own process so that the bytes
it reads and writes (``/proc/<pid>/io``: ``rchar`` and ``wchar`` count socket
traffic too) measure the traffic through it. Reported per case: the call's
time (median of ``--reps`` after a warm-up call on the first 20,000 rows, made
while the case is set up), the driver's peak RSS, the scheduler's bytes per
call, the output bytes, and the task count.

Usage:
    python benchmarks/w7_cluster.py --n 10000000 --reps 1 --cases single,cluster
    python benchmarks/w7_cluster.py --n 500000 --reps 1 --cases single,s3
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

try:
    from benchmarks import common, w1_linear
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    import common  # type: ignore[no-redef]
    import w1_linear  # type: ignore[no-redef]

NAME = "w7_cluster"
CASES = ("single", "cluster", "s3")
WARMUP_ROWS = 20_000
TARGET_VS_SINGLE = 1.3
TARGET_SCHEDULER_SHARE = 0.01


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _proc_io(pid: int) -> int:
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["rchar"]) + int(fields["wchar"])


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _start_cluster(workers: int, procs: list[subprocess.Popen[bytes]]) -> Any:
    """A scheduler and ``workers`` one-thread workers, each its own process; a client."""
    from distributed import Client

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(common.REPO_ROOT / "src")}
    quiet = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs.append(
        subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
             "--port", str(port), "--dashboard-address", ":0"],
            **quiet,
        )
    )  # fmt: skip
    for _ in range(workers):
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", f"tcp://127.0.0.1:{port}",
                 "--nthreads", "1", "--nworkers", "1", "--no-dashboard", "--memory-limit", "0"],
                **quiet,
            )
        )  # fmt: skip
    client = Client(f"tcp://127.0.0.1:{port}", timeout=60)
    client.wait_for_workers(workers, timeout=120)
    return client


def _start_s3() -> tuple[Any, dict[str, Any]]:
    """An S3-compatible server on loopback (moto) with a bucket; its storage options."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="x", aws_secret_access_key="x",
        region_name="us-east-1",
    ).create_bucket(Bucket="dopax-w7")  # fmt: skip
    options = {
        "key": "x", "secret": "x",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }  # fmt: skip
    return server, options


# ----------------------------------------------------------------------------
# Cases (run inside the driver process)
# ----------------------------------------------------------------------------


def build(case: str, params: dict[str, Any]) -> common.Case:
    """W1's persisted predict of ``y`` from a Zarr input, in the way ``case`` names.

    Setup writes the input, sets the posterior, starts the cluster (and the S3
    server) and makes one untimed warm-up call on the first 20,000 rows.
    """
    import jax

    n, draws = int(params["n"]), int(params["draws"])
    work = common.make_temp_dir(params.get("workdir"), f"dopax-w7-{case}-")
    procs: list[subprocess.Popen[bytes]] = []
    state: dict[str, Any] = {"calls": 0}

    def close() -> None:
        if state.get("client") is not None:
            state["client"].close()
        if state.get("server") is not None:
            state["server"].stop()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        common.closer(None, work)()

    try:
        X = w1_linear.make_X_zarr(n, w1_linear.NUM_FEATURES, str(work))
        model = common.new_impact_model("dopax", w1_linear.kernel, w1_linear.posterior(draws))
        kwargs: dict[str, Any] = {"return_sites": ("y",), "progress": False}
        if case in ("cluster", "s3"):
            state["client"] = kwargs["client"] = _start_cluster(int(params["workers"]), procs)
        if case == "s3":
            state["server"], kwargs["storage_options"] = _start_s3()
        key = jax.random.key(3)

        def target(i: int) -> str:
            return f"s3://dopax-w7/run{i}" if case == "s3" else str(work / f"out{i}")

        model.predict(X[: min(n, WARMUP_ROWS)], rng_key=key, output_dir=target(99), **kwargs)
        scheduler = procs[0].pid if procs else None
        io_before = _proc_io(scheduler) if scheduler else 0
    except BaseException:
        close()
        raise

    def call() -> Any:
        out = model.predict(X, rng_key=key, output_dir=target(state["calls"]), **kwargs)
        state["calls"] += 1
        return out

    def finish(tree: Any) -> dict[str, Any]:
        extra: dict[str, Any] = {"output_bytes": n * draws * 4}
        if case != "s3":
            extra["disk_bytes"] = _disk_bytes(work / f"out{state['calls'] - 1}")
        if scheduler:
            per_call = (_proc_io(scheduler) - io_before) / state["calls"]
            rows_per_block = int(tree.attrs["batch_size"])
            blocks = -(-n // rows_per_block)
            extra.update(
                scheduler_bytes_per_call=per_call,
                scheduler_share_of_output=per_call / extra["output_bytes"],
                tasks_per_call=-(-blocks // 4),
                rows_per_block=rows_per_block,
            )
        return extra

    return common.Case(call=call, finish=finish, close=close, info={"input_bytes": int(X.nbytes)})


BUILDERS = {case: (lambda params, case=case: build(case, params)) for case in CASES}


# ----------------------------------------------------------------------------
# The parent side
# ----------------------------------------------------------------------------


def run_workload(args: argparse.Namespace) -> dict[str, Any]:
    """Run every case in its own driver process, in order; return the payload."""
    params = common.pick(args, "n", "reps", "draws", "workers", "workdir")
    params["warmup"] = 0  # the warm-up call (on fewer rows) is part of the setup
    return common.cases_payload(NAME, args.cases, params, timeout=args.timeout)


def report(payload: dict[str, Any]) -> str:
    """A table of the cases and the target checks."""
    results = payload["results"]
    params = payload["params"]
    columns = [
        common.titled("s", common.SECONDS),
        common.CPU_SECONDS,
        common.versus(results, "single"),
        common.titled("driver peak RSS GiB", common.PEAK_RSS),
        common.extra_column("scheduler_bytes_per_call", "scheduler bytes per call"),
        common.extra_column("scheduler_share_of_output", "share of output"),
        common.extra_column("tasks_per_call", "tasks"),
        common.extra_column("rows_per_block", "rows per block"),
        common.DISK_GB,
        common.STATUS,
    ]
    targets = [common.time_target(results, "cluster", "single", TARGET_VS_SINGLE)]
    for case, res in results.items():
        if case != "single":
            share = common.extra_of(res).get("scheduler_share_of_output")
            label = f"{case}: scheduler bytes / output bytes"
            targets.append(common.target_line(label, share, TARGET_SCHEDULER_SHARE))
    return common.report_text(
        f"### W7 beyond one machine: W1's y, {params['n']:,} rows x {params['draws']:,} "
        f"draws from Zarr, {params['workers']} Dask workers",
        common.case_table(results, columns),
        results,
        targets=targets,
    )


def arg_parser() -> argparse.ArgumentParser:
    parser = common.base_arg_parser(
        __doc__.splitlines()[0], n=10_000_000, reps=1, cases=["single", "cluster"]
    )
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes")
    return parser


main = common.workload_cli(NAME, arg_parser, run_workload, report, BUILDERS, "w7_cluster_{n}")

if __name__ == "__main__":
    raise SystemExit(main())
