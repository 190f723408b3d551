"""Per-row predictive summaries in bounded memory: what the MLflow pyfunc serves.

Rows run in blocks sized so that one block's draws stay within
``ExecutionConfig.memory_budget_bytes``; each block is an in-memory forward
request whose row offset is the block's first row, so every row gets the
same random numbers as in one call over all rows: the summaries do not
depend on the block size. Kernels that couple rows (see the README) run all
rows in one block.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from dopax.config import get_config
from dopax.execution.engine import run_predictive
from dopax.execution.job import forward_job
from dopax.execution.request import PREDICT, Output, PredictiveRequest
from dopax.inference.posterior import Posterior
from dopax.model.impact_model import ImpactModel
from dopax.model.state import require_posterior
from dopax.sampling.keys import check_key, typed_key
from dopax.sampling.plan import FULL

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
    return Posterior({k: np.asarray(v[index]) for k, v in posterior.draws.items()}, 1)


def _rows_of(value: Any, n: int, r0: int, r1: int) -> Any:
    if hasattr(value, "shape") and len(value.shape) >= 1 and value.shape[0] == n:
        return value[r0:r1]
    return value


def _stats(values: np.ndarray, prob: float) -> dict[str, np.ndarray]:
    """Return mean, sd and the central interval over the leading (draw) axis."""
    values = values.astype(np.float64, copy=False)
    lo, hi = np.quantile(values, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
    sd = values.std(axis=0, ddof=1) if values.shape[0] > 1 else np.zeros(values.shape[1:])
    return {"mean": values.mean(axis=0), "sd": sd, "lower": lo, "upper": hi}


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
    ``prob`` interval). Sites without a row axis are summarised once and
    repeated on every row.

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
    state = model._state
    posterior = _thinned(require_posterior(state.posterior, "predict"), num_draws)
    if rng_key is not None:
        check_key(rng_key)
    key = typed_key(rng_key) if rng_key is not None else state.key
    kwargs = dict(kwargs or {})
    n = int(np.shape(X)[0])
    if n == 0:
        raise ValueError("The input has no rows.")

    def request(r0: int, r1: int) -> PredictiveRequest:
        return PredictiveRequest(
            kind=PREDICT,
            method="predict_on_batch",
            key=key,
            X=X[r0:r1],
            kwargs={k: _rows_of(v, n, r0, r1) for k, v in kwargs.items()},
            posterior=posterior,
            intervention=None
            if intervention is None
            else {k: _rows_of(np.asarray(v), n, r0, r1) for k, v in intervention.items()},
            return_sites=return_sites,
            in_sample=False,
            output=Output(in_memory=True, return_datatree=False),
            row_offset=r0,
        )

    plan = forward_job(state.ctx, request(0, n)).plan
    row_axis = {info.name: info.row_axis for info in plan.outputs}
    if plan.path == FULL:  # the kernel couples rows: they run together
        block_rows = n
    elif block_rows is None:
        per_row = sum(
            int(np.prod([s for i, s in enumerate(info.shape) if i != info.row_axis]))
            * np.dtype(info.dtype).itemsize
            for info in plan.outputs
            if info.row_axis is not None
        )
        # draws as stored plus their float64 copy and sorted copy for quantiles
        per_row_bytes = max(1, 4 * posterior.num_draws * max(per_row, 1))
        block_rows = max(1, get_config().budget_bytes() // per_row_bytes)
    columns: dict[str, list[np.ndarray]] = {}
    for r0 in range(0, n, max(1, int(block_rows))):
        r1 = min(n, r0 + int(block_rows))
        draws = run_predictive(state.ctx, request(r0, r1))
        assert isinstance(draws, dict)
        for site, value in draws.items():
            value = np.asarray(value)
            axis = row_axis.get(site)
            if axis is None:
                flat = value.reshape(value.shape[0], 1, -1)
                rest: tuple[int, ...] = value.shape[1:]
            else:
                moved = np.moveaxis(value, axis + 1, 1)
                rest = moved.shape[2:]
                flat = moved.reshape(moved.shape[0], moved.shape[1], -1)
            stats = _stats(flat, prob)
            for j, suffix in enumerate(_suffixes(rest)):
                for stat in STATS:
                    col = np.broadcast_to(stats[stat][:, j], (r1 - r0,))
                    columns.setdefault(f"{site}{suffix}_{stat}", []).append(col)
        del draws
    return pd.DataFrame({k: np.concatenate(v) for k, v in columns.items()})
