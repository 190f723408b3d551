"""The ``summarize`` and ``loo`` commands of the ``dopax`` command line.

Each runs the model's method of the same name on an input file's rows, with
the observed output taken from the file when it holds one, and writes the
result under ``-o``; the command line (:mod:`dopax.cli.main`) checks the
arguments and reports the result's folder.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = [
    "add_answer_parsers",
    "call_options",
    "forward_options",
    "run_loo",
    "run_summarize",
    "summarize_problem",
]


def call_options(args: argparse.Namespace, key: Any) -> dict[str, Any]:
    """Return the keyword arguments every scoring command passes the model.

    Args:
        args: The parsed command line (``--batch-size``, ``-o``, ``--quiet``).
        key: The ``--seed`` key, or ``None``.
    """
    return {
        "batch_size": args.batch_size,
        "rng_key": key,
        "output_dir": args.output,
        "progress": not args.quiet,
    }


def forward_options(p: argparse.ArgumentParser) -> None:
    """Add a forward pass's options: ``--return-sites``, ``--intervention``, ``--in-sample``."""
    p.add_argument("--return-sites", default=None, help="comma-separated sites (default: all)")
    p.add_argument(
        "--intervention",
        action="append",
        default=[],
        metavar="SITE=VALUE",
        help="fix a sample site to a value (repeatable)",
    )
    p.add_argument(
        "--in-sample",
        action="store_true",
        help="INPUT holds the training rows (group 'posterior_predictive')",
    )


def add_answer_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the ``summarize`` and ``loo`` commands to the command line's sub-parsers.

    Args:
        sub: The sub-parsers of ``dopax``.
        common: Adds the options every scoring command takes (MODEL, INPUT, -o, ...).
    """
    a = sub.add_parser(
        "summarize",
        help="write per-row summaries (mean, sd, interval, quantiles) for the rows of INPUT",
        description="Summarise the posterior predictive draws of every row of INPUT where "
        "they are drawn (no draws are kept) and write the summaries to a new Zarr folder under "
        "OUTPUT. When INPUT holds the observed output, the result has its PIT values and the "
        "intervals' coverage.",
    )
    common(a)
    forward_options(a)
    a.add_argument("--prob", type=float, default=0.94, help="interval probability")
    a.add_argument("--interval", choices=("eti", "hdi"), default="eti", help="interval kind")
    a.add_argument("--quantiles", default="", metavar="P[,P...]", help="extra quantiles")
    loo = sub.add_parser(
        "loo",
        help="PSIS-LOO cross-validation on the rows of INPUT (which hold the observed output)",
        description="Compute PSIS-LOO block by block from the pointwise log-likelihood, print "
        "ArviZ's summary and write loo_i and pareto_k to a new Zarr folder under OUTPUT.",
    )
    common(loo)


def _quantiles(text: str) -> tuple[float, ...]:
    return tuple(float(q) for q in text.split(",") if q.strip())


def summarize_problem(args: argparse.Namespace) -> str | None:
    """Return what is wrong with ``summarize``'s own options, or ``None``."""
    if not 0 < args.prob < 1:
        return f"--prob {args.prob}: must lie strictly between 0 and 1."
    try:
        quantiles = _quantiles(args.quantiles)
    except ValueError:
        return f"--quantiles {args.quantiles}: give probabilities, e.g. 0.05,0.5,0.95."
    if any(not 0 <= q <= 1 for q in quantiles):
        return f"--quantiles {args.quantiles}: each must lie in [0, 1]."
    return None


def run_summarize(
    args: argparse.Namespace, model: Any, inp: Any, intervention: dict[str, Any], key: Any
) -> str:
    """Summarise the rows of ``inp``; return the result's folder.

    Args:
        args: The parsed command line.
        model: The loaded model.
        inp: The input file read for it (:class:`~dopax.cli.inputs.InputFile`).
        intervention: Sample sites fixed by ``--intervention``.
        key: The ``--seed`` key, or ``None``.
    """
    kwargs = dict(inp.args)
    X = kwargs.pop(model.param_input)
    tree = model.summarize(
        X,
        inp.observed,
        prob=args.prob,
        interval=args.interval,
        quantiles=_quantiles(args.quantiles),
        return_sites=args.return_sites.split(",") if args.return_sites else None,
        in_sample=args.in_sample,
        intervention=intervention or None,
        **call_options(args, key),
        **kwargs,
    )
    if "coverage" in tree.attrs:
        print(f"coverage of the {args.prob:.0%} intervals: {tree.attrs['coverage']:.4f}")
    return str(tree.attrs["artifact_path"])


def run_loo(args: argparse.Namespace, model: Any, inp: Any, key: Any) -> str:
    """Cross-validate the model on the rows of ``inp``; print ArviZ's summary; return the folder.

    Args:
        args: The parsed command line.
        model: The loaded model.
        inp: The input file read for it, holding the observed output.
        key: The ``--seed`` key, or ``None``.
    """
    kwargs = dict(inp.args)
    X = kwargs.pop(model.param_input)
    elpd = model.loo(
        X,
        inp.observed,
        **call_options(args, key),
        **kwargs,
    )
    print(elpd)
    return str(elpd.attrs["artifact_path"])
