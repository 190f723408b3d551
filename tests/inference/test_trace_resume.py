"""Interrupted traced runs resume exactly: after kill -9, Ctrl-C and a failing writer.

Each interrupted run is a real one: a subprocess samples into a trace on disk
and is stopped with SIGKILL (during sampling, and during warm-up) or SIGINT
once the trace's progress marker shows enough durable segments, or fails on a
write of its store (`trace_case.FailingStore`). A new process then reopens and
resumes all of them, and every per-draw group (draws, statistics, warm-up and
unconstrained values) must equal the uninterrupted reference run bit for bit.

The store of the subprocesses (`trace_case.SlowStore`) writes its progress
marker 20 ms late, so that the test can stop a run between any two segments.
The subprocesses share a JAX compilation cache: only the first compiles.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import dopax
from inference import trace_case as case

TESTS = Path(__file__).resolve().parents[1]
SRC = Path(dopax.__file__).resolve().parents[1]

_CHILD = r"""
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from inference import trace_case as case
import dopax

mode = sys.argv[1]
if mode == "run":
    trace = case.new_trace(case.SlowStore(sys.argv[2], delay=0.02))
    try:
        case.fit(trace)
    except KeyboardInterrupt:
        print("KeyboardInterrupt", dopax.ZarrTrace.open(sys.argv[2]).status, flush=True)
        sys.exit(3)
    print("finished", flush=True)
elif mode == "fail":
    try:
        case.fit(case.new_trace(case.FailingStore(sys.argv[2], fail_at=3)))
    except OSError as exc:
        print(type(exc).__name__, exc, dopax.ZarrTrace.open(sys.argv[2]).status, flush=True)
        sys.exit(4)
    print("finished", flush=True)
else:
    for path in sys.argv[2:]:
        trace = dopax.ZarrTrace.open(path)
        assert trace.status == "interrupted", (path, trace.status)
        case.fit(trace)
        assert trace.status == "complete", (path, trace.status)
    print("resumed", flush=True)
"""


def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(TESTS)])
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return env


def _iterations(path: Path) -> tuple[int, ...]:
    try:
        return dopax.ZarrTrace.open(path).iterations_done
    except FileNotFoundError:
        return ()


def _stop_when(
    runs: list[tuple[subprocess.Popen[str], Path, Callable[[tuple[int, ...]], bool], int]],
    timeout: float = 240.0,
) -> dict[Path, tuple[int, ...]]:
    """Send each run its signal once its trace's marker satisfies its condition."""
    seen: dict[Path, tuple[int, ...]] = {}
    waiting = list(runs)
    deadline = time.monotonic() + timeout
    while waiting:
        for run in list(waiting):
            proc, path, condition, sig = run
            done = _iterations(path)
            if done and condition(done):
                proc.send_signal(sig)
                seen[path] = done
                waiting.remove(run)
            elif proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"the run ended before it was stopped ({done}): {out}{err[-3000:]}")
        if time.monotonic() > deadline:
            for proc, *_ in waiting:
                proc.kill()
            pytest.fail("the runs did not reach the stopping point in time")
        time.sleep(0.01)
    return seen


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = Path(tmp_path_factory.mktemp("interrupted"))
    env = _env(base / "jax-cache")
    paths = {
        name: base / f"{name}.zarr" for name in ("kill_sampling", "kill_warmup", "sigint", "error")
    }
    info: dict[str, Any] = {}

    def start(mode: str, path: Path) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", _CHILD, mode, str(path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    warmup, dpc = case.NUM_WARMUP, case.DPC
    # kill -9 during warm-up, and a failing write, side by side: these first
    # runs fill the compilation cache.
    procs = {"kill_warmup": start("run", paths["kill_warmup"])}
    procs["error"] = start("fail", paths["error"])
    seen = _stop_when(
        [(procs["kill_warmup"], paths["kill_warmup"], lambda d: min(d) >= 2 * dpc, signal.SIGKILL)]
    )
    procs["kill_warmup"].wait(timeout=600)
    # kill -9 once two segments of draws are durable, and Ctrl-C later during
    # sampling, side by side.
    for name in ("kill_sampling", "sigint"):
        procs[name] = start("run", paths[name])
    seen.update(
        _stop_when(
            [
                (
                    procs["kill_sampling"],
                    paths["kill_sampling"],
                    lambda d: min(d) >= warmup + 2 * dpc,
                    signal.SIGKILL,
                ),
                (
                    procs["sigint"],
                    paths["sigint"],
                    lambda d: min(d) >= warmup + 5 * dpc,
                    signal.SIGINT,
                ),
            ]
        )
    )
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        info[name] = {
            "returncode": proc.returncode,
            "stdout": out,
            "stderr": err,
            "at": seen.get(paths[name]),
        }
    for name, path in paths.items():
        trace = dopax.ZarrTrace.open(path)
        info[name].update(status=trace.status, before=trace.iterations_done)
    # Resume all four in a new process.
    resume = subprocess.run(
        [sys.executable, "-c", _CHILD, "resume", *(str(p) for p in paths.values())],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resume.returncode == 0, resume.stderr[-4000:]
    assert resume.stdout.strip() == "resumed"
    for name, path in paths.items():
        trace = dopax.ZarrTrace.open(path)
        info[name].update(after=trace.status, groups=case.draw_groups(trace))
    return info


def _check_resumed(run: dict[str, Any], reference: dict[str, Any]) -> None:
    assert run["status"] == "interrupted"
    assert run["after"] == "complete"
    case.assert_same_groups(run["groups"], reference["groups"])


def test_kill_9_during_sampling(interrupted: dict[str, Any], reference_trace: Any) -> None:
    run = interrupted["kill_sampling"]
    assert run["returncode"] == -signal.SIGKILL
    # At least the segments seen before the kill are durable; the run stopped early.
    assert all(b >= a for a, b in zip(run["at"], run["before"], strict=True))
    assert min(run["before"]) < case.NUM_WARMUP + case.NUM_SAMPLES
    _check_resumed(run, reference_trace)


def test_kill_9_during_warmup(interrupted: dict[str, Any], reference_trace: Any) -> None:
    run = interrupted["kill_warmup"]
    assert run["returncode"] == -signal.SIGKILL
    assert min(run["before"]) >= 2 * case.DPC and max(run["before"]) < case.NUM_WARMUP
    _check_resumed(run, reference_trace)


def test_ctrl_c(interrupted: dict[str, Any], reference_trace: Any) -> None:
    run = interrupted["sigint"]
    # fit_on_batch let the KeyboardInterrupt through, and the trace read as interrupted.
    assert run["returncode"] == 3, run["stderr"][-3000:]
    assert run["stdout"].strip() == "KeyboardInterrupt interrupted"
    assert min(run["before"]) >= case.NUM_WARMUP + 5 * case.DPC
    _check_resumed(run, reference_trace)


def test_failing_writer(interrupted: dict[str, Any], reference_trace: Any) -> None:
    run = interrupted["error"]
    # fit_on_batch raised the store's error, and the trace read as interrupted.
    assert run["returncode"] == 4, run["stderr"][-3000:]
    assert run["stdout"].strip() == "OSError injected write failure interrupted"
    # The failing write was the second segment of draws of the first chain.
    assert run["before"] == (case.NUM_WARMUP + case.DPC, case.NUM_WARMUP + case.DPC)
    _check_resumed(run, reference_trace)
