"""Per-row predictive summaries in bounded memory: what the MLflow pyfunc serves.

The summaries are those of :meth:`~dopax.ImpactModel.summarize`: rows run
in blocks sized from ``ExecutionConfig.memory_budget_bytes``, each block's
draws reduced inside its compiled program, with random numbers that follow
the rows, so the summaries do not depend on the block size. Kernels that
couple rows (see the README) run all rows in one block.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from dopax.execution.request import PREDICT, Output, PredictiveRequest, SummaryRequest
from dopax.inference.posterior import Posterior
from dopax.model.impact_model import ImpactModel
from dopax.model.snapshot import run_summary_request, snapshot
from dopax.model.state import require_posterior
from dopax.sampling.keys import check_key, typed_key

__all__ = ["STATS", "summarize_rows"]

#: The summaries of each return site, in column order.
STATS = ("mean", "sd", "lower", "upper")


def _thinned(posterior: Posterior, num_draws: int | None) -> Posterior:
    total = posterior.num_draws
    if num_draws is None or num_draws >= total:
        return posterior
    if num_draws < 1:
        raise ValueError(f"`num_draws` must be a positive int; got {num_draws}.")
    index = np.unique(np.round(np.linspace(0, total - 1, num_draws)).astype(np.int64))
    return dataclasses.replace(
        posterior,
        draws={k: np.asarray(v[index]) for k, v in posterior.draws.items()},
        num_chains=1,
        n_draws=len(index),
    )


def _suffixes(shape: tuple[int, ...]) -> list[str]:
    return ["_" + "_".join(str(i) for i in idx) if shape else "" for idx in np.ndindex(*shape)]


def summarize_rows(
    model: ImpactModel,
    X: Any,
    kwargs: Mapping[str, Any] | None = None,
    *,
    return_sites: Any = None,
    num_draws: int | None = None,
    intervention: Mapping[str, Any] | None = None,
    prob: float = 0.94,
    rng_key: Any = None,
    block_rows: int | None = None,
) -> pd.DataFrame:
    """Return per-row posterior-predictive summaries of new rows.

    For every return site and every element of it per row, the columns
    ``<site>[_<index>]_mean``, ``_sd``, ``_lower`` and ``_upper`` (the central
    ``prob`` interval), reduced inside the block program as
    :meth:`~dopax.ImpactModel.summarize` does. Sites without a row axis are
    summarised once and repeated on every row.

    Args:
        model: A fitted model.
        X: The input, one entry per row.
        kwargs: Further kernel arguments.
        return_sites: Sites to summarise (default: output and deterministic sites).
        num_draws: Posterior draws to use, evenly spaced (default: all).
        intervention: Site values imposed with ``numpyro.handlers.do``.
        prob: Probability of the central interval.
        rng_key: Key of the draws (default: the model's own key; the model's
            call counter is never advanced).
        block_rows: Rows per block (default: sized from the memory budget).
    """
    if not 0 < prob < 1:
        raise ValueError(f"`prob` must lie strictly between 0 and 1; got {prob}.")
    state = snapshot(model)
    posterior = _thinned(require_posterior(state.posterior, "predict"), num_draws)
    if rng_key is not None:
        check_key(rng_key)
    key = typed_key(rng_key) if rng_key is not None else state.key
    n = int(np.shape(X)[0])
    if n == 0:
        raise ValueError("The input has no rows.")
    forward = PredictiveRequest(
        kind=PREDICT,
        method="summarize",
        key=key,
        X=X,
        kwargs=dict(kwargs or {}),
        posterior=posterior,
        intervention=intervention,
        return_sites=return_sites,
        in_sample=False,
        output=Output(batch_size=block_rows, store="memory", progress=False),
    )
    tree = run_summary_request(model, SummaryRequest(forward, prob=prob))
    summary = tree["summary"].to_dataset()
    columns: dict[str, np.ndarray] = {}
    row_dims = tree.attrs["row_dims"]  # every site, in order, with its row dimension
    for site, row_dim in row_dims.items():
        stats = {stat: summary[f"{site}_{stat}"] for stat in STATS}
        first = stats["mean"]
        if row_dim is None:
            rest: tuple[int, ...] = tuple(first.shape)
            flat = {
                k: np.broadcast_to(np.asarray(v).reshape(1, -1), (n, v.size))
                for k, v in stats.items()
            }
        else:
            others = [d for d in first.dims if d != row_dim]
            rest = tuple(first.sizes[d] for d in others)
            flat = {
                k: np.asarray(v.transpose(row_dim, *others).values).reshape(n, -1)
                for k, v in stats.items()
            }
        for j, suffix in enumerate(_suffixes(rest)):
            for stat in STATS:
                columns[f"{site}{suffix}_{stat}"] = flat[stat][:, j]
    return pd.DataFrame(columns)
