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
from collections.abc import Callable, Iterator, Sequence
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
# Files and results on disk
# ----------------------------------------------------------------------------


def dir_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes that the files under ``path`` occupy on disk (``du`` semantics)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


@contextlib.contextmanager
def scratch_dir(base: str | None, prefix: str) -> Iterator[Path]:
    """A temporary folder under ``base`` (default: the system temp dir), removed on exit."""
    if base:
        Path(base).mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base or None))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


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


def save_results(name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``benchmarks/results/<name>.json`` and return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


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


def persisted_predict_case(
    package: str,
    kernel: Callable[..., Any],
    posterior: dict[str, Any],
    X: np.ndarray,
    *,
    check_site: str,
    workdir: str | None,
    predict_kwargs: dict[str, Any],
    seed: int = 2,
) -> Case:
    """A case timing ``ImpactModel.predict`` persisted to Zarr (dopax or aimz).

    Each repetition writes into a new folder; after the clock stops, the folder's
    size is measured, the last written value is checked, and the folder is deleted.
    """
    import jax

    model = new_impact_model(package, kernel, posterior)
    num_draws = len(next(iter(posterior.values())))
    scratch = Path(tempfile.mkdtemp(prefix=f"{package}-bench-", dir=workdir))
    key = jax.random.key(seed)

    def call() -> tuple[Any, Path]:
        out_dir = Path(tempfile.mkdtemp(prefix="predict-", dir=scratch))
        tree = model.predict(
            X, rng_key=key, output_dir=str(out_dir), progress=False, **predict_kwargs
        )
        return tree, out_dir

    def finish(out: tuple[Any, Path]) -> dict[str, Any]:
        tree, out_dir = out
        extra: dict[str, Any] = {"disk_bytes": dir_bytes(out_dir)}
        try:
            extra.update(check_persisted(tree, check_site, (num_draws, int(X.shape[0]))))
        except Exception as exc:
            extra["check_error"] = repr(exc)
        del tree
        shutil.rmtree(out_dir, ignore_errors=True)
        return extra

    def close() -> None:
        with contextlib.suppress(Exception):
            model.cleanup()
        shutil.rmtree(scratch, ignore_errors=True)

    return Case(call=call, finish=finish, close=close, info={"input_bytes": int(X.nbytes)})


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
    builders: dict[str, Callable[[dict[str, Any]], Case]],
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
    sys.stdout.write(RESULT_MARKER + json.dumps(result, default=str) + "\n")
    sys.stdout.flush()
    return 0


# ----------------------------------------------------------------------------
# The parent side
# ----------------------------------------------------------------------------


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


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
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            cwd=REPO_ROOT,
            env=_child_env(),
            stdout=subprocess.PIPE,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {
            "module": module,
            "case": case,
            "params": params,
            "status": "failed",
            "reason": f"timed out after {timeout} s",
        }
    wall = time.perf_counter() - start
    result: dict[str, Any] | None = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            result = json.loads(line[len(RESULT_MARKER) :])
        elif line.strip():
            print(line, file=sys.stderr)
    if result is None:
        result = {
            "module": module,
            "case": case,
            "params": params,
            "status": "failed",
            "reason": f"worker exited with code {proc.returncode} and no result "
            "(killed for memory?)",
        }
    result["process_wall_seconds"] = wall
    status = result["status"]
    summary = f"{result['seconds']:.3f} s median" if status == "ok" else result.get("reason")
    print(f"[bench] {module}:{case} -> {status}: {summary}", file=sys.stderr, flush=True)
    return result


def add_rounds_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--rounds`` option of workloads that compare cases (see :func:`run_cases`)."""
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the cases this many times, interleaved, and pool their repetitions",
    )


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
# Reporting
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


def status_notes(results: dict[str, dict[str, Any]]) -> list[str]:
    """One line per case that did not run (with the reason) or ran fewer than 3 timed reps."""
    notes = []
    for case, res in results.items():
        if res.get("status") != "ok":
            notes.append(f"- {case}: {res.get('status')}: {res.get('reason', '')}")
        elif len(res.get("times", ())) < 3:
            notes.append(f"- {case}: median of {len(res['times'])} repetition(s), fewer than 3")
    return notes


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


def target_line(label: str, value: float | None, limit: float) -> str:
    """One line stating a target and whether the measured value meets it."""
    if value is None:
        return f"- {label} <= {limit:g}: not measured"
    verdict = "met" if value <= limit else "NOT met"
    return f"- {label} <= {limit:g}: {value:.3g} ({verdict})"


def timestamp() -> str:
    """Current UTC time, ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def base_arg_parser(description: str) -> argparse.ArgumentParser:
    """Options shared by every workload CLI."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per case")
    parser.add_argument("--draws", type=int, default=1000, help="posterior draws")
    parser.add_argument(
        "--workdir",
        default=None,
        help="base folder for persisted outputs (default: the system temp dir)",
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds per case process")
    parser.add_argument("--name", default=None, help="results file name (without .json)")
    parser.add_argument("--no-save", action="store_true", help="do not write results JSON")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dopax ExecutionConfig setting for the dopax cases, e.g. --set direct_io=false "
        "(repeatable; values parsed as JSON, else taken as strings; 'none' means None)",
    )
    return parser


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


def publish(
    payload: dict[str, Any],
    machine: dict[str, Any],
    args: Any,
    name: str,
    report: Callable[[dict[str, Any]], str],
) -> None:
    """Annotate a workload's payload, print its report and save it unless ``--no-save``."""
    payload.update(machine=machine, command=" ".join(sys.argv), finished_at=timestamp())
    print(describe_machine(machine))
    print()
    print(report(payload))
    if not args.no_save:
        path = save_results(args.name or name, payload)
        print(f"\nresults: {path}")
