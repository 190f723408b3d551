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
time (median of ``--reps`` after a warm-up call), the driver's peak RSS, the
scheduler's bytes, the output bytes, and the task count.

Usage:
    python benchmarks/w7_cluster.py --n 10000000 --reps 1 --cases single,cluster
    python benchmarks/w7_cluster.py --n 500000 --reps 1 --cases single,s3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _proc_io(pid: int) -> int:
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["rchar"]) + int(fields["wchar"])


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_case(case: str, n: int, reps: int, workers: int, workdir: str) -> dict[str, Any]:
    """Run one case in this process (the driver) and return its figures."""
    sys.path.insert(0, str(REPO))
    import jax

    from benchmarks import common, w1_linear

    work = Path(tempfile.mkdtemp(prefix=f"dopax-w7-{case}-", dir=workdir))
    procs: list[subprocess.Popen[bytes]] = []
    out: dict[str, Any] = {"case": case, "n": n}
    try:
        X = w1_linear.make_X_zarr(n, 10, str(work))
        model = common.new_impact_model("dopax", w1_linear.kernel, w1_linear.posterior(1000))
        kwargs: dict[str, Any] = {"return_sites": ("y",), "progress": False}
        client = None
        scheduler_pid = None
        if case in ("cluster", "s3"):
            from distributed import Client

            port = _free_port()
            env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "distributed.cli.dask_scheduler",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--dashboard-address",
                        ":0",
                    ],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            scheduler_pid = procs[0].pid
            for _ in range(workers):
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "distributed.cli.dask_worker",
                            f"tcp://127.0.0.1:{port}",
                            "--nthreads",
                            "1",
                            "--nworkers",
                            "1",
                            "--no-dashboard",
                            "--memory-limit",
                            "0",
                        ],
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            client = Client(f"tcp://127.0.0.1:{port}", timeout=60)
            client.wait_for_workers(workers, timeout=120)
            kwargs["client"] = client
        if case == "s3":
            from moto.server import ThreadedMotoServer

            s3_port = _free_port()
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
            server.start()
            import boto3

            endpoint = f"http://127.0.0.1:{s3_port}"
            boto3.client(
                "s3", endpoint_url=endpoint, aws_access_key_id="x", aws_secret_access_key="x",
                region_name="us-east-1",
            ).create_bucket(Bucket="dopax-w7")  # fmt: skip
            kwargs["storage_options"] = {
                "key": "x", "secret": "x",
                "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
            }  # fmt: skip
        key = jax.random.key(3)

        def target(i: int) -> str:
            return f"s3://dopax-w7/run{i}" if case == "s3" else str(work / f"out{i}")

        model.predict(X[: min(n, 20_000)], rng_key=key, output_dir=target(99), **kwargs)
        io_before = _proc_io(scheduler_pid) if scheduler_pid else 0
        times = []
        tree = None
        for i in range(reps):
            start = time.perf_counter()
            tree = model.predict(X, rng_key=key, output_dir=target(i), **kwargs)
            times.append(time.perf_counter() - start)
        assert tree is not None
        times.sort()
        out["seconds"] = times[len(times) // 2]
        out["times"] = times
        out["output_bytes"] = n * 1000 * 4
        if case != "s3":
            out["disk_bytes"] = _disk_bytes(work / "out0")
        if scheduler_pid:
            out["scheduler_bytes_per_call"] = (_proc_io(scheduler_pid) - io_before) / reps
            out["scheduler_share_of_output"] = out["scheduler_bytes_per_call"] / out["output_bytes"]
            blocks = -(-n // int(tree.attrs["batch_size"]))
            out["tasks_per_call"] = -(-blocks // 4)
            out["rows_per_block"] = int(tree.attrs["batch_size"])
        out["driver_peak_rss_gib"] = (
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
        )
        if client is not None:
            client.close()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cases", default="single,cluster")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case, args.n, args.reps, args.workers, args.workdir)))
        return 0
    results = {}
    for case in args.cases.split(","):
        cmd = [sys.executable, __file__, "--case", case, "--n", str(args.n), "--reps",
               str(args.reps), "--workers", str(args.workers)]  # fmt: skip
        if args.workdir:
            cmd += ["--workdir", args.workdir]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            results[case] = {"status": "failed"}
            continue
        results[case] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(case, json.dumps(results[case]), flush=True)
    ref = results.get("single", {}).get("seconds")
    for case, res in results.items():
        if ref and "seconds" in res:
            print(f"{case}: {res['seconds']:.1f} s = {res['seconds'] / ref:.3f} x single")
    out_dir = REPO / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"w7_cluster_{args.n}.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
