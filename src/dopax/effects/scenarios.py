"""Scenario arithmetic: every scenario on every block, shared random numbers.

For each block of rows, the kernel runs once per scenario with the *same*
call key, so the scenarios share their random numbers (common random
numbers): observation noise cancels in contrasts. Reductions run inside the
compiled function and only small summaries leave the device: per draw the sum
of the outcome per scenario (and per group), and per row the posterior mean
and a central interval of each contrast (the reductions of
:func:`dopax.reductions.draws.summarize_draws`, as ``summarize`` takes them).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from dopax.parallel.sharded import BlockInputs, OutputAxes
from dopax.reductions.draws import summarize_draws
from dopax.sampling.forward import (
    PassSpec,
    forward_draw,
    map_draws,
    restore_row_axes,
    with_params,
)

__all__ = ["ScenarioProgram", "group_codes"]


@dataclasses.dataclass(frozen=True)
class ScenarioProgram:
    """The block program of a scenario comparison, run by the engine's block runner.

    Its block arguments: ``rows = {"scenarios": (rows_0, ...), "codes": group
    ids}``, ``shared = {"scenarios": (shared_0, ...), "n_rows": total rows}``,
    and ``row_do``, ``shared_do``, ``anchor``, ``anchor_do`` one mapping per
    scenario. Outputs: ``sums`` (S, D), ``group_sums`` (S, D, G), and per
    row of each contrast (C = S - 1) its posterior mean ``row_mean`` and the
    bounds ``row_lower``, ``row_upper`` of its central ``interval`` (each (C,
    R), reduced over every draw of the block), and with ``keep_draws`` every
    scenario's draws of the site as ``draws`` (D, S, R, ...). Rows past
    ``n_rows`` (padding) count in no sum.

    Attributes:
        spec: The pass description (``return_sites`` must be ``(site,)``).
        site: The outcome site.
        n_scenarios: Number of scenarios.
        baseline: Index of the baseline scenario.
        n_groups: Number of groups (1 when there is no grouping).
        keep_draws: Whether to also return every scenario's draws.
        cells_per_step: Draw-by-row cells per sequential step.
        interval: Probability of the per-row central intervals.
        row_axis: The outcome site's row axis (a panel's outcome ``(T, units)``
            has it second); a row's outcome is the mean over its other axes.
    """

    spec: PassSpec
    site: str
    n_scenarios: int
    baseline: int
    n_groups: int
    keep_draws: bool
    cells_per_step: int
    interval: float = 0.94
    row_axis: int = 0

    #: Every block holds every draw of its rows (per-row intervals are over all draws).
    whole_draws: ClassVar[bool] = True

    @property
    def outputs(self) -> tuple[OutputAxes, ...]:
        """The reductions (summed over rows), the per-row contrasts, the kept draws."""
        out = (
            OutputAxes("sums", 1, None, summed_over_rows=True),
            OutputAxes("group_sums", 1, None, summed_over_rows=True),
            *(OutputAxes(f"row_{s}", None, 1) for s in ("mean", "lower", "upper")),
        )
        return (*out, OutputAxes("draws", 0, 2)) if self.keep_draws else out

    def local(self, inputs: BlockInputs) -> dict[str, jax.Array]:
        """Evaluate every scenario on one block and reduce (see the class docstring)."""
        call_key, row_offset = inputs.call_key, inputs.row_offset
        row_do, shared_do = inputs.row_do, inputs.shared_do
        anchor, anchor_do = inputs.anchor, inputs.anchor_do
        s_rows, codes = inputs.rows["scenarios"], inputs.rows["codes"]
        shared = inputs.shared
        s_shared = shared["scenarios"]
        n_block = int(codes.shape[0])
        row_ids = row_offset + jnp.arange(n_block, dtype=jnp.uint32)
        row_mask = (row_ids < shared["n_rows"].astype(jnp.uint32)).astype(jnp.float32)
        onehot = jax.nn.one_hot(codes, self.n_groups, dtype=jnp.float32) * row_mask[:, None]
        n_s, baseline, site = self.n_scenarios, self.baseline, self.site
        others = [s for s in range(n_s) if s != baseline]

        def one(draw_index: jax.Array, per_draw: Any) -> dict[str, jax.Array]:
            # Every scenario of one draw in one place, with the same keys, so
            # they draw the same random numbers (on CPU XLA computes them once
            # per scenario, each fused into its own values). Each scenario's
            # values are reduced on their own: stacking them first would make
            # XLA's CPU code compute the kernel inside a concatenation, about
            # half as fast.
            latent_d, row_values = per_draw
            values = []
            raws = []
            for s in range(n_s):
                out = forward_draw(
                    self.spec,
                    call_key,
                    draw_index,
                    row_offset,
                    with_params(inputs.params, latent_d),
                    {**s_shared[s], **s_rows[s]},
                    {**shared_do[s], **restore_row_axes(self.spec, row_do[s])},
                    {**s_shared[s], **anchor[s]},
                    {**shared_do[s], **restore_row_axes(self.spec, anchor_do[s])},
                    row_values,
                    inputs.row_params,
                )[site]
                raws.append(out)
                by_row = jnp.moveaxis(out, self.row_axis, 0) if self.row_axis else out
                values.append(by_row.reshape(n_block, -1).mean(axis=-1).astype(jnp.float32))
            res = {
                "sums": jnp.stack([(v * row_mask).sum() for v in values]),  # (S,)
                "group_sums": jnp.stack([v @ onehot for v in values]),  # (S, G)
                "diffs": jnp.stack([values[s] - values[baseline] for s in others]),  # (C, R)
            }
            if self.keep_draws:
                res["draws"] = jnp.stack(raws)
            return res

        per_draw = (dict(inputs.latent), dict(inputs.row_latent))
        out = map_draws(one, inputs.draws, per_draw, n_block, self.cells_per_step)
        rows_summary = summarize_draws(out["diffs"], self.interval)  # over the draws (D, C, R)
        result = {
            "sums": out["sums"].T,  # (S, D)
            "group_sums": jnp.moveaxis(out["group_sums"], 0, 1),  # (S, D, G)
            **{f"row_{s}": rows_summary[s] for s in ("mean", "lower", "upper")},  # (C, R)
        }
        if self.keep_draws:
            result["draws"] = out["draws"]  # (D, S, R, ...)
        return result


def _natural_key(text: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key of text in natural order: digit runs compare as numbers."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part.lower())
        for part in re.split(r"(\d+)", text)
        if part
    )


def _missing_error(missing: np.ndarray) -> ValueError:
    rows = np.flatnonzero(missing)
    return ValueError(
        f"`by` has {rows.size} missing label(s) (first at row {int(rows[0])}); every row needs "
        "a group. Give them one, e.g. `by.fillna('missing')` for a pandas Series, or drop "
        "those rows."
    )


def group_codes(by: Any, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Encode per-row group labels as integer codes, groups in their natural order.

    A pandas categorical keeps the order of its categories (those present);
    numbers sort ascending; text sorts in natural order, so "decile 2" comes
    before "decile 10".

    Args:
        by: One label per row, or ``None``.
        n_rows: Number of rows.

    Returns:
        ``(codes, labels)``.

    Raises:
        ValueError: If ``by`` does not have one label per row, or a label is
            missing (``None``, ``NaN``).
    """
    if by is None:
        return np.zeros(n_rows, np.int32), np.asarray(["all"])
    import pandas as pd

    categorical = isinstance(getattr(by, "dtype", None), pd.CategoricalDtype)
    labels_in = np.asarray(pd.Categorical(by).codes if categorical else by)
    if labels_in.ndim != 1 or labels_in.shape[0] != n_rows:
        raise ValueError(
            f"`by` must hold one group label per row ({n_rows}); got shape {labels_in.shape}."
        )
    if categorical:
        if (labels_in < 0).any():
            raise _missing_error(labels_in < 0)
        used = np.unique(labels_in)  # category order
        labels = np.asarray(pd.Categorical(by).categories)[used]
        return np.searchsorted(used, labels_in).astype(np.int32), labels
    missing = np.asarray(pd.isna(labels_in), dtype=bool)
    if missing.any():
        raise _missing_error(missing)
    if labels_in.dtype.kind in "biuf":
        labels, codes = np.unique(labels_in, return_inverse=True)
        return codes.astype(np.int32), labels
    text = labels_in.astype(str)
    unique, inverse = np.unique(text, return_inverse=True)
    order = sorted(range(unique.size), key=lambda i: _natural_key(str(unique[i])))
    rank = np.empty(unique.size, np.int32)
    rank[order] = np.arange(unique.size, dtype=np.int32)
    return rank[inverse].astype(np.int32), unique[order]
