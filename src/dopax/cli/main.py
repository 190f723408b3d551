"""The ``dopax`` command line: score, summarise and cross-validate saved models, compare scenarios.

Run ``dopax --help`` (or ``python -m dopax --help``) for the commands. Every
argument and input is checked before anything is written: a bad one (an
unknown site, an input without rows or with NaN or Inf, a model that is
damaged or would run code without ``--trust-code``) exits with status 2 and
a message naming it, and leaves no folder behind. Status 0 means a complete
result was written; 1 means the run failed while running (what it had
written is removed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from dopax._warn import ignoring
from dopax.cli.answers import (
    add_answer_parsers,
    call_options,
    forward_options,
    run_loo,
    run_summarize,
    summarize_problem,
)
from dopax.exceptions import InputError, ScenarioError

__all__ = ["build_parser", "main"]

_EPILOG = """\
examples:
  dopax predict model/ new_rows.parquet -o results/
      posterior-predictive draws for every row of new_rows.parquet, written
      to a new folder under results/ (its path is printed)
  dopax effect model/ people.csv --scenario treated:t=1 --scenario control:t=0 \\
        --baseline control -o results/
      the average effect of setting t to 1 instead of 0, with its uncertainty
  dopax summarize model/ people.csv -o results/
      per-row mean, sd and 94% interval of every return site, with PIT values
      and the intervals' coverage when people.csv holds the observed output
  dopax loo model/ people.csv -o results/
      PSIS-LOO of the model on rows holding the observed output
  dopax show results/predict-20250101T120000-ab12cd34.zarr
      the groups, variables, shapes and attributes of a result

MODEL is a folder written by dopax.save_model (or the model/ folder inside an
MLflow model of the dopax flavor). Its kernel is code: loading imports its
module or runs its kernel.py only with --trust-code. INPUT is a table (.parquet, .csv) whose
columns hold the kernel's per-row arguments: a 1-D argument t is the column
t, a 2-D argument X is the columns X_0, X_1, ...; or arrays named after the
kernel's arguments (.npz, a .zarr folder); or the input array alone (.npy).
"""


class UsageError(Exception):
    """A bad command-line argument; the message names it."""


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text}")
    return value


def _common(p: argparse.ArgumentParser, output: bool = True) -> None:
    p.add_argument("model", metavar="MODEL", help="folder written by dopax.save_model")
    p.add_argument("input", metavar="INPUT", help="rows to score (.parquet .csv .zarr .npz .npy)")
    if output:
        p.add_argument(
            "-o",
            "--output",
            required=True,
            metavar="OUTPUT",
            help="base folder or URL (as output_dir takes); the result goes to a new "
            "sub-folder whose path is printed",
        )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="random seed (default: one derived from the model's key, the same every run)",
    )
    p.add_argument("--batch-size", type=_positive, default=None, help="rows per block")
    p.add_argument(
        "--trust-code",
        action="store_true",
        help="run the model's own code: import its kernel's module, or run its kernel.py, and "
        "call the functions its manifest names (only for models you trust)",
    )
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load a pickled kernel or inference object (runs the code it holds)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the ``dopax`` command."""
    parser = argparse.ArgumentParser(
        prog="dopax",
        description="Score saved dopax models on data files and inspect their results.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser(
        "predict",
        help="write posterior-predictive draws for the rows of INPUT",
        description="Write posterior-predictive draws for every row of INPUT (new rows by "
        "default: group 'predictions') to a new Zarr folder under OUTPUT.",
    )
    _common(p)
    forward_options(p)
    e = sub.add_parser(
        "effect",
        help="compare scenarios on the rows of INPUT",
        description="Compare scenarios in one pass with shared random numbers; print the "
        "summary and write the effect result to a new Zarr folder under OUTPUT.",
    )
    _common(e)
    e.add_argument(
        "--scenario",
        action="append",
        required=True,
        metavar="NAME:ARG=VALUE[,ARG=VALUE]",
        help="a scenario: kernel arguments set to a value for every row, or sample sites "
        "fixed by intervention; 'NAME' alone keeps INPUT as it is (repeatable)",
    )
    e.add_argument("--baseline", required=True, metavar="NAME", help="scenario to compare with")
    e.add_argument("--site", default=None, help="outcome site (default: the output site)")
    e.add_argument("--by", default=None, metavar="COLUMN", help="group rows by this column")
    e.add_argument("--interval", type=float, default=0.94, help="interval probability")
    add_answer_parsers(sub, _common)
    s = sub.add_parser(
        "show",
        help="print the groups, variables, shapes and attributes of a result or saved model",
        description="Print what a result folder (or a saved model) holds and whether it is "
        "complete. Exits with status 1 for an incomplete result.",
    )
    s.add_argument("path", metavar="RESULT", help="result folder or saved model folder")
    return parser


def _number(text: str, where: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            continue
    raise UsageError(f"{where}: {text!r} is not a number.")


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    from dopax.cli.inputs import read_input
    from dopax.persist.saved import load_model

    try:
        model = load_model(args.model, trust_code=args.trust_code, allow_pickle=args.allow_pickle)
    except (ValueError, OSError) as err:
        raise UsageError(f"MODEL {args.model}: {err}") from err
    try:
        return model, read_input(args.input, model)
    except (ValueError, TypeError, OSError) as err:
        raise UsageError(str(err)) from err


def _output(path: str) -> Any:
    """Return the location of ``-o`` (a local folder or a URL, as ``output_dir`` takes)."""
    from dopax.output.location import location

    try:
        where = location(path, name="-o")
    except (TypeError, ValueError) as err:
        raise UsageError(f"-o {path}: {err}") from err
    if where.path is not None and where.path.exists() and not where.path.is_dir():
        raise UsageError(f"-o {path}: exists and is not a folder.")
    return where


def _key(seed: int | None) -> Any:
    return None if seed is None else jax.random.key(seed)


def _intervention(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    do = {}
    for item in args.intervention:
        site, eq, value = item.partition("=")
        if not eq or not site:
            raise UsageError(f"--intervention {item!r}: give SITE=VALUE.")
        do[site] = np.float32(_number(value, f"--intervention {item}"))
    sites = model.kernel_spec.sample_sites if model.kernel_spec else ()
    unknown = sorted(set(do) - set(sites))
    if unknown:
        raise UsageError(f"--intervention: unknown site(s) {unknown}; sample sites: {list(sites)}.")
    return do


def _predict(args: argparse.Namespace) -> str:
    model, inp = _load(args)
    do = _intervention(args, model)
    kwargs = dict(inp.args)
    X = kwargs.pop(model.param_input)
    return_sites = None
    if args.return_sites is not None:
        return_sites = [n.strip() for n in args.return_sites.split(",") if n.strip()]
        spec = model.kernel_spec
        known = set(spec.return_sites) | set(spec.sample_sites) if spec is not None else None
        if not return_sites or (known is not None and not set(return_sites) <= known):
            unknown = sorted(set(return_sites) - (known or set()))
            raise UsageError(
                f"--return-sites {args.return_sites}: unknown site(s) {unknown}; the model's "
                f"sites are {sorted(known or ())}."
            )
    tree = model.predict(
        X,
        intervention=do or None,
        in_sample=args.in_sample,
        return_sites=return_sites,
        **call_options(args, _key(args.seed)),
        **kwargs,
    )
    return str(tree.attrs["artifact_path"])


def _summarize(args: argparse.Namespace) -> str:
    problem = summarize_problem(args)
    if problem:
        raise UsageError(problem)
    model, inp = _load(args)
    return run_summarize(args, model, inp, _intervention(args, model), _key(args.seed))


def _loo(args: argparse.Namespace) -> str:
    model, inp = _load(args)
    if inp.observed is None:
        raise UsageError(
            f"INPUT {args.input}: `loo` needs the observed output {model.param_output!r} "
            "(a column or array of that name)."
        )
    return run_loo(args, model, inp, _key(args.seed))


def _scenarios(args: argparse.Namespace, model: Any, inp: Any) -> dict[str, dict[str, Any]]:
    params = [p for p in _kernel_params(model) if p != model.param_output]
    sites = list(model.kernel_spec.sample_sites) if model.kernel_spec else []
    out: dict[str, dict[str, Any]] = {}
    for text in args.scenario:
        name, _, rest = text.partition(":")
        where = f"--scenario {text}"
        if not name.strip():
            raise UsageError(f"{where}: give NAME:ARG=VALUE[,ARG=VALUE...].")
        if name in out:
            raise UsageError(f"{where}: scenario {name!r} is given twice.")
        spec: dict[str, Any] = {}
        do: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            arg, eq, value = part.partition("=")
            if not eq or not arg:
                raise UsageError(f"{where}: {part!r} is not ARG=VALUE.")
            number = _number(value, where)
            if arg in params:
                base = inp.args.get(arg)
                if hasattr(base, "shape") and len(base.shape) >= 1:
                    spec[arg] = np.full(base.shape, number, dtype=np.dtype(base.dtype))
                else:
                    spec[arg] = number
            elif arg in sites:
                do[arg] = np.float32(number)
            else:
                raise UsageError(
                    f"{where}: {arg!r} is neither a kernel argument {params} nor a sample "
                    f"site {sites}."
                )
        if do:
            spec["intervention"] = do
        out[name] = spec
    if args.baseline not in out:
        raise UsageError(f"--baseline {args.baseline}: not one of the scenarios {list(out)}.")
    return out


def _kernel_params(model: Any) -> list[str]:
    import inspect

    return list(inspect.signature(model.kernel).parameters)


def _variable_strings(ds: Any) -> Any:
    """Store names as variable-length strings (Zarr v3 specifies no fixed-length ones)."""
    fix = {k: v.astype(object) for k, v in ds.variables.items() if v.dtype.kind == "U"}
    return ds.assign_coords({k: v for k, v in fix.items() if k in ds.coords}).assign(
        {k: v for k, v in fix.items() if k not in ds.coords}
    )


def _no_temp() -> Any:  # pragma: no cover - `-o` is required
    raise RuntimeError("The command line always writes under `-o`.")


def _write_effect(tree: Any, base: str) -> str:
    """Write an effect tree as a complete result (every chunk, then the completion marker)."""
    import xarray as xr
    import zarr
    import zarr.codecs

    from dopax.output.store import COMPLETE_ATTR
    from dopax.persist.files import Folder
    from dopax.streaming.targets import call_location

    where, _ = call_location(base, "effect", _no_temp)
    from dopax.streaming.sinks.codecs import with_checksum

    nodes = {
        "/" if key == "." else f"/{key}": _variable_strings(node.to_dataset(inherit=False))
        for key, node in tree.subtree_with_keys
    }
    # every chunk ends with its checksum, as the sinks write them
    codecs = with_checksum((zarr.codecs.ZstdCodec(level=0),))
    encoding = {
        path: {str(name): {"compressors": codecs} for name in ds.variables}
        for path, ds in nodes.items()
    }
    if where.path is not None:
        where.path.parent.mkdir(parents=True, exist_ok=True)
    target = str(where.path) if where.path is not None else where.open_store(read_only=False)
    try:
        with (
            ignoring("Consolidated metadata is currently not", zarr.errors.ZarrUserWarning),
            zarr.config.set({"array.write_empty_chunks": True}),
        ):
            xr.DataTree.from_dict(nodes).to_zarr(
                target, mode="w-", consolidated=True, zarr_format=3, encoding=encoding
            )
            zarr.open_group(target, mode="r+", use_consolidated=True).attrs[COMPLETE_ATTR] = True
    except BaseException:
        Folder(where.label, dict(where.storage_options) or None).remove()
        raise
    return str(where.label)


def _effect(args: argparse.Namespace) -> str:
    if not 0 < args.interval < 1:
        raise UsageError(f"--interval {args.interval}: must lie strictly between 0 and 1.")
    model, inp = _load(args)
    scenarios = _scenarios(args, model, inp)
    by = None
    if args.by is not None:
        by = inp.column(args.by)
        if by is None:
            raise UsageError(f"--by {args.by}: INPUT has no such column or array.")
    if args.site is not None and model.kernel_spec is not None:
        known = set(model.kernel_spec.return_sites) | set(model.kernel_spec.sample_sites)
        if args.site not in known:
            raise UsageError(f"--site {args.site}: not a site of the model {sorted(known)}.")
    kwargs = dict(inp.args)
    X = kwargs.pop(model.param_input)
    result = model.compare_scenarios(
        X,
        scenarios,
        baseline=args.baseline,
        site=args.site,
        by=by,
        interval=args.interval,
        rng_key=_key(args.seed),
        batch_size=args.batch_size,
        progress=not args.quiet,
        **kwargs,
    )
    path = _write_effect(result.tree, args.output)
    print(result.summary(prob=args.interval).to_string())
    return path


def _show(path: str) -> int:
    from dopax.cli.show import show

    return show(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dopax`` command and return its exit status.

    0: a complete result was written. 1: the run failed while running (what
    it had written is removed). 2: a bad argument or input (checked before
    anything is written, or found by the model: a kernel argument that does
    not fit, NaN or Inf in the input, a scenario that cannot be). 130: interrupted.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "show":
        return _show(args.path)
    created = False
    try:
        where = _output(args.output)
        created = where.path is not None and not where.path.exists()
        commands = {"predict": _predict, "summarize": _summarize, "loo": _loo, "effect": _effect}
        path = commands[args.command](args)
    except (UsageError, InputError, ScenarioError) as err:
        # (a kernel argument that does not fit, a scenario that cannot be: bad input too)
        _remove_new(args.output, created)
        parser.exit(2, f"dopax {args.command}: error: {err}\n")
        raise  # pragma: no cover - parser.exit raises SystemExit
    except Exception as err:
        _remove_new(args.output, created)
        print(f"dopax {args.command}: failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        _remove_new(args.output, created)
        print(f"dopax {args.command}: interrupted; nothing was kept.", file=sys.stderr)
        return 130
    from dopax.output.store import is_complete

    if not is_complete(path):  # pragma: no cover - writers raise before this
        print(f"dopax {args.command}: the result at {path} is incomplete.", file=sys.stderr)
        return 1
    print(path)
    return 0


def _remove_new(path: str, created: bool) -> None:
    if created and os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
