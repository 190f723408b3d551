"""Shared harness for the dopax benchmarks (see ``BENCHMARKS.md`` at the project root).

Every measurement runs in a fresh Python process, so the peak RSS reported for a
case is that of a whole process which ran that case alone. The parent process
(the CLI of each workload) never touches an accelerator: it spawns

    python -m benchmarks.<module> --case <case> --json '<params>'

and reads back one JSON line. Inside the worker, a case is set up (data, fit,
model), called once untimed to compile, then called ``reps`` times under the
clock; the figure is the median of those timed calls. Anything a case does after
the clock stops (checking and measuring what was written, deleting it) is kept
out of the timing.

The harness has four parts, each used by every workload script:

- the command line (`add_options`, `base_arg_parser`, `workload_cli`): the
  options workloads share (``--n``, ``--sizes``, ``--cases``, ``--reps``,
  ``--draws``, ``--workdir``, ``--name``, ``--no-save``, ...) and the flow of a
  run: a worker process, or the parent that runs the cases, prints the report
  and saves it;
- fresh processes (`run_worker`, `run_case`, `run_cases`; `worker_main` and
  `emit_result` on the worker's side): one JSON line of results back from each;
- cases (`Case`, `measure`, `folder_case`, `persisted_predict_case`,
  `predictive_case`): what runs under the clock and what is checked after it;
- results (`cases_payload`, `save_results`, `publish`) and tables
  (`timing_table`, `case_table` and its columns, `time_target`, `report_text`).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
RESULT_MARKER = "@@dopax-bench-result@@ "
GIB = 1024**3
GB = 1000**3

# ----------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------


def make_X(n: int, k: int, seed: int = 0, chunk_rows: int = 1_000_000) -> np.ndarray:
    """Standard-normal float32 inputs of shape ``(n, k)``, filled in row chunks.

    The generator fills rows in order, so ``make_X(n, k)`` is a prefix of
    ``make_X(m, k)`` for ``m > n`` and no float64 temporary is ever allocated.
    """
    X = np.empty((n, k), dtype=np.float32)
    rng = np.random.default_rng(seed)
    for start in range(0, n, chunk_rows):
        rng.standard_normal(dtype=np.float32, out=X[start : start + chunk_rows])
    return X


# ----------------------------------------------------------------------------
# Optional packages
# ----------------------------------------------------------------------------


class SkipCase(Exception):
    """Raised while setting up a case that cannot run here (e.g. a missing package)."""


def import_dopax() -> Any:
    """Import ``dopax``, falling back to the checkout's ``src/`` when it is not installed."""
    try:
        return importlib.import_module("dopax")
    except ModuleNotFoundError as exc:
        if exc.name != "dopax":
            raise
    src = str(REPO_ROOT / "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    return importlib.import_module("dopax")


def import_impact_model(package: str) -> Any:
    """Return ``<package>.ImpactModel`` for ``dopax`` or ``aimz``, or raise `SkipCase`."""
    try:
        module = import_dopax() if package == "dopax" else importlib.import_module(package)
        return module.ImpactModel
    except Exception as exc:
        raise SkipCase(f"{package}.ImpactModel is not importable: {exc!r}") from exc


def package_version(name: str) -> str | None:
    """Installed version of a distribution, or ``None``."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def dopax_version() -> str | None:
    """Version of the dopax that the workers import (installed or from ``src/``)."""
    version = package_version("dopax")
    if version is not None:
        return version
    path = REPO_ROOT / "src" / "dopax" / "_version.py"
    if path.exists():
        namespace: dict[str, Any] = {}
        exec(path.read_text(), namespace)
        return str(namespace.get("__version__"))
    return None


# ----------------------------------------------------------------------------
# Files on disk
# ----------------------------------------------------------------------------


def dir_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes that the files under ``path`` occupy on disk (``du`` semantics)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def make_temp_dir(workdir: str | os.PathLike[str] | None, prefix: str) -> Path:
    """A new folder under ``workdir`` (made when missing; default: the system temp dir)."""
    if workdir:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=workdir or None))


def find_variable(tree: Any, name: str) -> Any:
    """First data variable called ``name`` in any node of a DataTree (``(group, DataArray)``)."""
    for node in tree.subtree:
        if name in node.data_vars:
            return node.path, node[name]
    raise KeyError(f"no variable {name!r} in any group of the result tree")


def check_persisted(tree: Any, name: str, shape_tail: tuple[int, ...]) -> dict[str, Any]:
    """Check a persisted result after the clock stopped: shape, and the last value is written.

    Reads one value of the last draw and last row, which sits in the last chunk to
    be written, so an incomplete store shows up as a missing or non-finite value.
    """
    group, var = find_variable(tree, name)
    shape = tuple(int(s) for s in var.shape)
    ok_shape = shape[-len(shape_tail) :] == tuple(shape_tail)
    last = np.asarray(var[(-1,) * var.ndim].values)
    return {
        "group": group,
        "shape": list(shape),
        "complete": bool(ok_shape and np.all(np.isfinite(last))),
    }


# ----------------------------------------------------------------------------
# Measurement inside a worker process
# ----------------------------------------------------------------------------


@dataclass
class Case:
    """One prepared benchmark case.

    Attributes:
        call: The work under the clock. It must return only once the work is
            complete (device arrays ready, persisted stores fully written).
        finish: Runs after the clock stopped, with what ``call`` returned: checks,
            measures and deletes outputs; returns extra figures for that repetition.
        close: Runs once after the last repetition (cleanup).
        info: Static figures about the case (e.g. bytes of the input array).
    """

    call: Callable[[], Any]
    finish: Callable[[Any], dict[str, Any]] | None = None
    close: Callable[[], None] | None = None
    info: dict[str, Any] = field(default_factory=dict)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # KiB on Linux


def measure(case: Case, reps: int, warmup: int = 1) -> dict[str, Any]:
    """Call ``case`` ``warmup`` times untimed, then ``reps`` times timed; median seconds.

    Besides wall-clock seconds, the CPU seconds of the whole process (all threads)
    are recorded per call: on a shared machine they are less disturbed by other load.
    """
    if reps < 1:
        raise ValueError("reps must be >= 1")
    warm_times: list[float] = []
    times: list[float] = []
    cpu_times: list[float] = []
    extras: list[dict[str, Any]] = []
    for i in range(warmup + reps):
        cpu_start = time.process_time()
        start = time.perf_counter()
        out = case.call()
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        extra = case.finish(out) if case.finish is not None else {}
        del out
        gc.collect()
        if i < warmup:
            warm_times.append(elapsed)
        else:
            times.append(elapsed)
            cpu_times.append(cpu)
            extras.append(extra)
    return {
        "seconds": statistics.median(times),
        "times": times,
        "cpu_seconds": statistics.median(cpu_times),
        "cpu_times": cpu_times,
        "warmup_seconds": warm_times,
        "extra": extras[-1] if extras else {},
        "extra_per_rep": extras,
    }


def fit_autonormal(
    kernel: Callable[..., Any],
    *args: Any,
    num_steps: int,
    num_draws: int,
    learning_rate: float = 1e-2,
    seed: int = 0,
    **kwargs: Any,
) -> dict[str, np.ndarray]:
    """Fit ``kernel`` with SVI (AutoNormal, Adam) and draw ``num_draws`` posterior samples.

    Keys are fixed, so every worker process gets the same draws on a given machine.
    ``args``/``kwargs`` are the kernel's training arguments. Only latent sample
    sites are returned: ``sample_posterior`` also evaluates deterministic sites on
    the training rows, which are no part of the posterior.
    """
    import jax
    from numpyro import handlers
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal
    from numpyro.optim import Adam

    guide = AutoNormal(kernel)
    svi = SVI(kernel, guide, Adam(learning_rate), Trace_ELBO())
    fit = svi.run(jax.random.key(seed), num_steps, *args, progress_bar=False, **kwargs)
    draws = guide.sample_posterior(
        jax.random.key(seed + 1), fit.params, *args, sample_shape=(num_draws,), **kwargs
    )
    trace = handlers.trace(handlers.seed(kernel, 0)).get_trace(*args, **kwargs)
    latent = {
        name
        for name, site in trace.items()
        if site["type"] == "sample" and not site.get("is_observed", False)
    }
    return {name: np.asarray(value) for name, value in draws.items() if name in latent}


def new_impact_model(package: str, kernel: Callable[..., Any], posterior: dict[str, Any]) -> Any:
    """``<package>.ImpactModel`` over ``kernel`` with ``posterior`` set (no fitting).

    The SVI object only satisfies the constructor; the draws come from `fit_autonormal`.
    """
    impact_model = import_impact_model(package)
    import jax
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal
    from numpyro.optim import Adam

    inference = SVI(kernel, AutoNormal(kernel), Adam(1e-2), Trace_ELBO())
    model = impact_model(kernel, rng_key=jax.random.key(3), inference=inference)
    model.set_posterior_sample(posterior)
    return model


def batch_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    """``{"batch_size": ...}`` when the case's parameters set one, else ``{}``."""
    if params.get("batch_size") is None:
        return {}
    return {"batch_size": int(params["batch_size"])}


def closer(model: Any = None, *folders: str | os.PathLike[str]) -> Callable[[], None]:
    """A ``close`` for a case: ``model.cleanup()`` (errors ignored), then delete ``folders``."""

    def close() -> None:
        if model is not None:
            with contextlib.suppress(Exception):
                model.cleanup()
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)

    return close


def folder_case(
    produce: Callable[[Path], Any],
    check: Callable[[Any, Path], dict[str, Any]] | None = None,
    *,
    workdir: str | None,
    prefix: str,
    model: Any = None,
    remove: Sequence[str | os.PathLike[str]] = (),
    info: dict[str, Any] | None = None,
) -> Case:
    """A case whose every call writes into a new folder of its own.

    ``produce(folder)`` is the work under the clock (the folder is made inside
    the call). After the clock stops the folder's size on disk is measured
    (``disk_bytes``), ``check(result, folder)`` adds its figures, and the folder
    is deleted. On close, ``model.cleanup()`` runs and the scratch folder under
    ``workdir`` and the paths in ``remove`` are deleted.
    """
    scratch = make_temp_dir(workdir, prefix)

    def call() -> tuple[Any, Path]:
        folder = Path(tempfile.mkdtemp(prefix="out-", dir=scratch))
        return produce(folder), folder

    def finish(out: tuple[Any, Path]) -> dict[str, Any]:
        result, folder = out
        extra: dict[str, Any] = {"disk_bytes": dir_bytes(folder)}
        if check is not None:
            extra.update(check(result, folder))
        shutil.rmtree(folder, ignore_errors=True)
        return extra

    return Case(
        call=call, finish=finish, close=closer(model, scratch, *remove), info=dict(info or {})
    )


def persisted_predict_case(
    package: str,
    kernel: Callable[..., Any],
    posterior: dict[str, Any],
    X: Any,
    *,
    check_site: str,
    workdir: str | None,
    predict_kwargs: dict[str, Any],
    seed: int = 2,
    remove: Sequence[str | os.PathLike[str]] = (),
) -> Case:
    """A case timing ``ImpactModel.predict`` persisted to Zarr (dopax or aimz).

    Each repetition writes into a new folder (see `folder_case`); after the
    clock stops, its size is measured, the last written value of ``check_site``
    is checked, and the folder is deleted.
    """
    import jax

    model = new_impact_model(package, kernel, posterior)
    num_draws = len(next(iter(posterior.values())))
    key = jax.random.key(seed)

    def produce(folder: Path) -> Any:
        return model.predict(
            X, rng_key=key, output_dir=str(folder), progress=False, **predict_kwargs
        )

    def check(tree: Any, _folder: Path) -> dict[str, Any]:
        try:
            return check_persisted(tree, check_site, (num_draws, int(X.shape[0])))
        except Exception as exc:
            return {"check_error": repr(exc)}

    return folder_case(
        produce,
        check,
        workdir=workdir,
        prefix=f"{package}-bench-",
        model=model,
        remove=remove,
        info={"input_bytes": int(X.nbytes)},
    )


def predictive_case(
    kernel: Callable[..., Any],
    posterior: dict[str, Any],
    X: np.ndarray,
    return_sites: Sequence[str] | None = None,
    seed: int = 2,
) -> Case:
    """NumPyro ``Predictive`` in memory, ``jax.block_until_ready``: the usual reference."""
    import jax
    from numpyro.infer import Predictive

    sites = None if return_sites is None else list(return_sites)
    predictive = Predictive(kernel, posterior_samples=posterior, return_sites=sites)
    key = jax.random.key(seed)

    def call() -> dict[str, Any]:
        return jax.block_until_ready(predictive(key, X))

    def finish(out: dict[str, Any]) -> dict[str, Any]:
        return {"output_bytes": int(sum(v.nbytes for v in out.values()))}

    return Case(call=call, finish=finish, info={"input_bytes": int(X.nbytes)})


def env_info() -> dict[str, Any]:
    """Versions and JAX devices as seen by this process (initialises the JAX backend)."""
    import jax

    info: dict[str, Any] = {
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
    }
    for dist_name in ("jax", "jaxlib", "numpyro", "numpy", "zarr", "xarray", "flax", "aimz"):
        info[dist_name] = package_version(dist_name)
    info["dopax"] = dopax_version()
    return info


def worker_main(
    module: str,
    builders: Mapping[str, Callable[[dict[str, Any]], Case]],
    argv: Sequence[str] | None = None,
) -> int:
    """Entry point of a worker process: set up one case, measure it, print one JSON line."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{module}")
    parser.add_argument("--case", required=True, choices=sorted(builders))
    parser.add_argument("--json", default="{}", help="case parameters as a JSON object")
    args = parser.parse_args(argv)
    params = json.loads(args.json)
    reps = int(params.get("reps", 3))
    warmup = int(params.get("warmup", 1))
    result: dict[str, Any] = {"module": module, "case": args.case, "params": params}
    case: Case | None = None
    try:
        if params.get("dopax_config"):
            from dopax.config import set_config

            set_config(**params["dopax_config"])
        start = time.perf_counter()
        case = builders[args.case](params)
        result["setup_seconds"] = time.perf_counter() - start
        result["setup_peak_rss_gib"] = peak_rss_bytes() / GIB
        result["info"] = case.info
        result.update(measure(case, reps=reps, warmup=warmup))
        result["status"] = "ok"
    except SkipCase as exc:
        result.update(status="skipped", reason=str(exc))
    except Exception as exc:
        traceback.print_exc()
        result.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
    finally:
        if case is not None and case.close is not None:
            try:
                case.close()
            except Exception:
                traceback.print_exc()
    result["peak_rss_gib"] = peak_rss_bytes() / GIB
    with contextlib.suppress(Exception):
        result["env"] = env_info()
    emit_result(result)
    return 0


def emit_result(result: dict[str, Any]) -> None:
    """Print a worker's result as the one line that `run_worker` reads back."""
    sys.stdout.write(RESULT_MARKER + json.dumps(result, default=str) + "\n")
    sys.stdout.flush()


# ----------------------------------------------------------------------------
# The parent side
# ----------------------------------------------------------------------------


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_worker(
    cmd: Sequence[str], *, env: dict[str, str] | None = None, timeout: float | None = None
) -> dict[str, Any]:
    """Run ``cmd`` in a fresh process from the repository root; return the result it printed.

    A worker prints its result as one JSON line (`emit_result`); its other
    output goes to this process's stderr. Without that line (a crash, a kill for
    memory, a timeout) the result is ``{"status": "failed", "reason": ...}``.
    ``process_wall_seconds`` is the whole process's wall time. ``env`` defaults
    to this process's environment with the repository on ``PYTHONPATH``.
    """
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            list(cmd),
            cwd=REPO_ROOT,
            env=_child_env() if env is None else env,
            stdout=subprocess.PIPE,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timed out after {timeout} s"}
    wall = time.perf_counter() - start
    result: dict[str, Any] | None = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            result = json.loads(line[len(RESULT_MARKER) :])
        elif line.strip():
            print(line, file=sys.stderr)
    if result is None:
        result = {
            "status": "failed",
            "reason": f"worker exited with code {proc.returncode} and no result "
            "(killed for memory?)",
        }
    result["process_wall_seconds"] = wall
    return result


def run_case(
    module: str, case: str, *, timeout: float | None = None, **params: Any
) -> dict[str, Any]:
    """Run one case of ``benchmarks.<module>`` in a fresh process and return its result.

    The worker's stderr goes straight to this process's stderr. The result dict
    always has ``status`` (``ok``, ``skipped`` or ``failed``); timed cases carry
    ``seconds`` (median), ``times``, ``warmup_seconds`` and ``peak_rss_gib``.
    """
    if _DOPAX_CONFIG:
        params = {**params, "dopax_config": dict(_DOPAX_CONFIG)}
    cmd = [sys.executable, "-m", f"benchmarks.{module}", "--case", case, "--json"]
    cmd.append(json.dumps(params))
    print(f"[bench] {module}:{case} {json.dumps(params)}", file=sys.stderr, flush=True)
    result = {"module": module, "case": case, "params": params}
    result.update(run_worker(cmd, timeout=timeout))
    status = result["status"]
    summary = f"{result['seconds']:.3f} s median" if status == "ok" else result.get("reason")
    print(f"[bench] {module}:{case} -> {status}: {summary}", file=sys.stderr, flush=True)
    return result


def run_cases(
    module: str,
    cases: Sequence[str],
    *,
    rounds: int = 1,
    timeout: float | None = None,
    **params: Any,
) -> dict[str, dict[str, Any]]:
    """Run every case ``rounds`` times, each time in a fresh process, interleaved.

    Round ``i`` runs the cases in the order rotated by ``i`` (``a b c``, then
    ``b c a``, ...), so a machine that drifts faster or slower over minutes
    (a shared virtual machine) affects every case alike rather than whichever
    ran last. A case's timed repetitions from all rounds are pooled: its
    ``seconds`` is their median, its peak RSS the largest of the rounds, and
    ``round_seconds`` keeps each round's median. A case that fails or is
    skipped in any round is reported as that round reported it.
    """
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    runs: dict[str, list[dict[str, Any]]] = {case: [] for case in cases}
    for i in range(rounds):
        order = [*cases[i % len(cases) :], *cases[: i % len(cases)]] if cases else []
        for case in order:
            runs[case].append(run_case(module, case, timeout=timeout, **params))
    return {case: _pooled(results) for case, results in runs.items()}


def _pooled(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge the results of one case from several rounds (see :func:`run_cases`)."""
    if len(results) == 1:
        return results[0]
    failed = [r for r in results if r.get("status") != "ok"]
    if failed:
        return failed[0]
    merged = dict(results[-1])
    merged["times"] = [t for r in results for t in r["times"]]
    merged["cpu_times"] = [t for r in results for t in r["cpu_times"]]
    merged["seconds"] = statistics.median(merged["times"])
    merged["cpu_seconds"] = statistics.median(merged["cpu_times"])
    merged["round_seconds"] = [r["seconds"] for r in results]
    merged["peak_rss_gib"] = max(r["peak_rss_gib"] for r in results)
    merged["setup_peak_rss_gib"] = max(r["setup_peak_rss_gib"] for r in results)
    return merged


def round_ratios(
    results: dict[str, dict[str, Any]], case: str, reference: str
) -> list[float] | None:
    """Per-round ratio of ``case`` to ``reference`` (medians of the same round), if pooled."""
    num = (results.get(case) or {}).get("round_seconds")
    den = (results.get(reference) or {}).get("round_seconds")
    if not num or not den or len(num) != len(den):
        return None
    return [a / b for a, b in zip(num, den, strict=True)]


def round_notes(results: dict[str, dict[str, Any]], case: str, reference: str) -> list[str]:
    """A line with each round's ratio of ``case`` to ``reference``, when rounds were run."""
    ratios = round_ratios(results, case, reference)
    if not ratios:
        return []
    listed = ", ".join(f"{r:.3f}" for r in ratios)
    return [f"- {case} / {reference} in each round (medians of that round): {listed}"]


def machine_info() -> dict[str, Any]:
    """Machine, versions and JAX devices, collected in a child process."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    with contextlib.suppress(Exception):
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False)
        info["memory_gib"] = round(psutil.virtual_memory().total / GIB, 1)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.common", "--env-info"],
        cwd=REPO_ROOT,
        env=_child_env(),
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    try:
        info.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    except (IndexError, json.JSONDecodeError):
        info["env_error"] = f"env probe exited with code {proc.returncode}"
    return info


def describe_machine(info: dict[str, Any]) -> str:
    """One line about the machine and versions, for the top of a report."""
    return (
        f"{info.get('platform')}, {info.get('cpu_count')} CPUs, "
        f"{info.get('memory_gib')} GiB RAM; devices {info.get('jax_devices')}; "
        f"jax {info.get('jax')}, numpyro {info.get('numpyro')}, dopax {info.get('dopax')}, "
        f"aimz {info.get('aimz')}, flax {info.get('flax')}"
    )


# ----------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` or ``None`` when either is missing."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def seconds_of(result: dict[str, Any] | None) -> float | None:
    """Median seconds of a result, or ``None`` unless it ran."""
    if not result or result.get("status") != "ok":
        return None
    return float(result["seconds"])


def cpu_seconds_of(result: dict[str, Any] | None) -> float | None:
    """Median process CPU seconds of a result, or ``None`` unless it ran."""
    if not result or result.get("status") != "ok" or "cpu_seconds" not in result:
        return None
    return float(result["cpu_seconds"])


def setup_rss_of(result: dict[str, Any] | None) -> float | None:
    """Peak RSS (GiB) once the case was set up (data, fit, model), before any timed call."""
    if not result or result.get("status") != "ok":
        return None
    return result.get("setup_peak_rss_gib")


def rss_of(result: dict[str, Any] | None) -> float | None:
    """Peak RSS (GiB) of a case that ran, else ``None``."""
    if not result or result.get("status") != "ok":
        return None
    return float(result["peak_rss_gib"])


def extra_of(result: dict[str, Any] | None) -> dict[str, Any]:
    """The figures a case's last repetition added after the clock (``{}`` unless it ran)."""
    if not result or result.get("status") != "ok":
        return {}
    return dict(result.get("extra") or {})


def gb(n_bytes: float | None) -> float | None:
    """Bytes as GB (10**9), or ``None``."""
    return None if n_bytes is None else n_bytes / GB


def fmt(value: Any, digits: int = 3) -> str:
    """Format a table cell: floats to ``digits`` significant places, ``None`` as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; cells go through `fmt`."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    return "\n".join(lines)


#: A table column: its header and its cell, from a row's key and result.
Column = tuple[str, Callable[[str, dict[str, Any]], Any]]

SECONDS: Column = ("median s", lambda _key, res: seconds_of(res))
CPU_SECONDS: Column = ("CPU s", lambda _key, res: cpu_seconds_of(res))
SETUP_RSS: Column = ("setup RSS GiB", lambda _key, res: setup_rss_of(res))
PEAK_RSS: Column = ("peak RSS GiB", lambda _key, res: rss_of(res))
DISK_GB: Column = ("disk GB", lambda _key, res: gb(extra_of(res).get("disk_bytes")))
STATUS: Column = ("status", lambda _key, res: res.get("status"))
COMPLETE: Column = ("complete", lambda _key, res: extra_of(res).get("complete"))


def titled(header: str, column: Column) -> Column:
    """``column`` under another header."""
    return (header, column[1])


def extra_column(key: str, header: str | None = None) -> Column:
    """A column with the figure ``key`` that a case added after the clock."""
    return (header or key, lambda _key, res: extra_of(res).get(key))


def versus(results: dict[str, dict[str, Any]], reference: str, header: str | None = None) -> Column:
    """A column with each case's median seconds over those of case ``reference``."""
    ref = seconds_of(results.get(reference))
    return (header or f"x {reference}", lambda _key, res: ratio(seconds_of(res), ref))


def case_table(
    results: dict[str, dict[str, Any]],
    columns: Sequence[Column],
    first: str = "case",
    label: Callable[[str], Any] = str,
) -> str:
    """A markdown table with a row per result: ``label(key)`` under ``first``, then ``columns``."""
    headers = [first, *(header for header, _ in columns)]
    rows = [[label(key), *(cell(key, res) for _, cell in columns)] for key, res in results.items()]
    return markdown_table(headers, rows)


def timing_table(
    results: dict[str, dict[str, Any]],
    references: Sequence[str | Column] = (),
    *,
    cpu: bool = True,
    setup_rss: bool = False,
    extra: Sequence[Column] = (),
    first: str = "case",
    seconds: str = "median s",
) -> str:
    """The usual table of a workload's cases.

    Columns: median seconds (header ``seconds``), CPU seconds, the ratio to each
    of ``references`` (a case name, or a `versus` column of one), setup RSS,
    peak RSS, disk GB, the ``extra`` columns, status.
    """
    columns = [titled(seconds, SECONDS)]
    if cpu:
        columns.append(CPU_SECONDS)
    columns += [versus(results, r) if isinstance(r, str) else r for r in references]
    if setup_rss:
        columns.append(SETUP_RSS)
    columns += [PEAK_RSS, DISK_GB, *extra, STATUS]
    return case_table(results, columns, first)


def status_notes(results: dict[str, dict[str, Any]]) -> list[str]:
    """One line per case that did not run (with the reason) or ran fewer than 3 timed reps."""
    notes = []
    for case, res in results.items():
        if res.get("status") != "ok":
            notes.append(f"- {case}: {res.get('status')}: {res.get('reason', '')}")
        elif len(res.get("times", ())) < 3:
            notes.append(f"- {case}: median of {len(res['times'])} repetition(s), fewer than 3")
    return notes


def target_line(label: str, value: float | None, limit: float) -> str:
    """One line stating a target and whether the measured value meets it."""
    if value is None:
        return f"- {label} <= {limit:g}: not measured"
    verdict = "met" if value <= limit else "NOT met"
    return f"- {label} <= {limit:g}: {value:.3g} ({verdict})"


def time_target(
    results: dict[str, dict[str, Any]],
    case: str,
    reference: str,
    limit: float,
    label: str | None = None,
) -> str:
    """`target_line` for the median seconds of ``case`` over those of ``reference``."""
    value = ratio(seconds_of(results.get(case)), seconds_of(results.get(reference)))
    return target_line(label or f"{case} / {reference}", value, limit)


def report_text(
    title: str,
    table: str,
    results: dict[str, dict[str, Any]] | None = None,
    *,
    notes: Sequence[str] = (),
    targets: Sequence[str] = (),
    heading: str = "Targets:",
) -> str:
    """A workload's report: title, table, `status_notes` of ``results``, notes, targets."""
    lines = [title, "", table]
    if results is not None:
        lines += status_notes(results)
    lines += [*notes, "", heading, *targets]
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------


def timestamp() -> str:
    """Current UTC time, ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def save_results(name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``benchmarks/results/<name>.json`` and return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def publish(
    payload: dict[str, Any],
    machine: dict[str, Any],
    args: Any,
    name: str,
    report: Callable[[dict[str, Any]], str],
) -> None:
    """Annotate a workload's payload, print its report and save it unless ``--no-save``.

    The file is ``benchmarks/results/<--name or name>.json``.
    """
    payload.update(machine=machine, command=" ".join(sys.argv), finished_at=timestamp())
    print(describe_machine(machine))
    print()
    print(report(payload), flush=True)
    if not getattr(args, "no_save", False):
        path = save_results(getattr(args, "name", None) or name, payload)
        print(f"\nresults: {path}")


# ----------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------


def ints(text: str) -> list[int]:
    """Comma-separated whole numbers (``"100000,1000000"``); ``""`` is none."""
    return [int(s) for s in text.split(",") if s.strip()]


def names(text: str) -> list[str]:
    """Comma-separated names (``"predictive,dopax"``); ``""`` is none."""
    return [s.strip() for s in text.split(",") if s.strip()]


#: The options workloads share, by destination: argparse settings and a help text.
#: A workload adds those it has with its own defaults (`add_options`).
OPTIONS: dict[str, dict[str, Any]] = {
    "n": {"type": int, "help": "rows"},
    "sizes": {"type": ints, "help": "comma-separated row counts"},
    "rss_sizes": {"type": ints, "help": "comma-separated row counts of the memory runs"},
    "cases": {"type": names, "help": "comma-separated cases"},
    "reps": {"type": int, "help": "timed repetitions per case"},
    "rounds": {
        "type": int,
        "help": "run the cases this many times, interleaved, and pool their repetitions",
    },
    "draws": {"type": int, "help": "posterior draws"},
    "batch_size": {"type": int, "help": "predict batch_size"},
    "workdir": {"help": "base folder for persisted outputs (default: the system temp dir)"},
    "timeout": {"type": float, "help": "seconds per case process"},
    "name": {"help": "results file name (without .json)"},
    "no_save": {"action": "store_true", "help": "do not write results JSON"},
    "set": {
        "action": "append",
        "metavar": "KEY=VALUE",
        "help": "dopax ExecutionConfig setting for the dopax cases, e.g. --set direct_io=false "
        "(repeatable; values parsed as JSON, else taken as strings; 'none' means None)",
    },
}

#: The options of every workload that runs cases (`base_arg_parser`), with their defaults.
WORKLOAD_OPTIONS: dict[str, Any] = {
    "reps": 3,
    "draws": 1000,
    "workdir": None,
    "timeout": None,
    "name": None,
    "no_save": False,
    "set": [],
}


def add_options(
    parser: argparse.ArgumentParser, helps: dict[str, str] | None = None, **defaults: Any
) -> argparse.ArgumentParser:
    """Add the shared `OPTIONS` named in ``defaults`` (``batch_size`` is ``--batch-size``).

    Each keyword's value is the option's default; list options (``sizes``,
    ``cases``, ...) take a list and parse the command line's comma-separated
    text into one. ``helps`` replaces help texts.
    """
    for dest, default in defaults.items():
        settings = dict(OPTIONS[dest])
        if helps and dest in helps:
            settings["help"] = helps[dest]
        if isinstance(default, (list, tuple)):
            default = list(default)
        parser.add_argument("--" + dest.replace("_", "-"), dest=dest, default=default, **settings)
    return parser


def base_arg_parser(description: str, **defaults: Any) -> argparse.ArgumentParser:
    """A parser with `WORKLOAD_OPTIONS` and the shared options named in ``defaults``."""
    parser = argparse.ArgumentParser(description=description)
    return add_options(parser, **{**WORKLOAD_OPTIONS, **defaults})


#: dopax settings for every case of this run (from ``--set``), sent to workers.
_DOPAX_CONFIG: dict[str, Any] = {}


def use_dopax_settings(pairs: Sequence[str]) -> dict[str, Any]:
    """Record ``KEY=VALUE`` settings that every later :func:`run_case` passes on."""
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            value = None if raw.lower() == "none" else json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        _DOPAX_CONFIG[key.strip()] = value
    return dict(_DOPAX_CONFIG)


def options(parser: argparse.ArgumentParser, **given: Any) -> argparse.Namespace:
    """The options of ``parser`` at their defaults, with ``given`` in place (for `run_all`)."""
    args = parser.parse_args([])
    for key, value in given.items():
        if not hasattr(args, key):
            raise TypeError(f"no option {key!r}")
        setattr(args, key, value)
    return args


def pick(args: argparse.Namespace, *keys: str) -> dict[str, Any]:
    """The options ``keys`` of ``args`` as a dict (the parameters sent to the workers)."""
    return {key: getattr(args, key) for key in keys}


def cases_payload(
    name: str,
    cases: Sequence[str],
    params: dict[str, Any],
    *,
    rounds: int = 1,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run ``cases`` with ``params`` (`run_cases`) and return the workload's payload."""
    results = run_cases(name, cases, rounds=rounds, timeout=timeout, **params)
    return {"workload": name, "params": {**params, "rounds": rounds}, "results": results}


def workload_cli(
    name: str,
    arg_parser: Callable[[], argparse.ArgumentParser],
    run: Callable[[argparse.Namespace], dict[str, Any]],
    report: Callable[[dict[str, Any]], str],
    builders: Mapping[str, Callable[[dict[str, Any]], Case]] | None = None,
    results_name: str | Callable[[argparse.Namespace], str] | None = None,
) -> Callable[..., int]:
    """The ``main(argv=None)`` of a workload script.

    With ``--case`` (and ``builders``) it is a worker process: `worker_main`.
    Otherwise it parses ``argv`` with ``arg_parser()``, makes the ``--workdir``
    folder, applies ``--set``, describes the machine, calls ``run(args)`` for the
    payload (the cases run in fresh processes), prints ``report(payload)`` and
    saves the payload as ``benchmarks/results/<name>.json`` (see `publish`).
    ``results_name`` replaces ``name``: a function of the options, or a
    template filled in with them (``"w7_cluster_{n}"``).
    """

    def main(argv: Sequence[str] | None = None) -> int:
        argv = list(sys.argv[1:] if argv is None else argv)
        if builders is not None and "--case" in argv:
            return worker_main(name, builders, argv)
        args = arg_parser().parse_args(argv)
        if getattr(args, "workdir", None):
            Path(args.workdir).mkdir(parents=True, exist_ok=True)
        use_dopax_settings(getattr(args, "set", None) or [])
        machine = machine_info()
        payload = run(args)
        if isinstance(results_name, str):
            name_of_run = results_name.format(**vars(args))
        else:
            name_of_run = results_name(args) if results_name else name
        publish(payload, machine, args, name_of_run, report)
        return 0

    return main


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.common --env-info`` prints `env_info` as JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--env-info", action="store_true")
    args = parser.parse_args(argv)
    if args.env_info:
        print(json.dumps(env_info()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
