"""Host-side gathering of a scenario comparison: running sums and per-row summaries.

The block program (:class:`~dopax.effects.scenarios.ScenarioProgram`) reduces
each block: per draw the sums of each scenario's outcome, per row the mean and
central interval of each contrast over all draws. The host adds up the sums
(in float64) and files the per-row summaries.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["EffectAccumulator", "block_summary"]

#: The per-row outputs of a scenario block, and their names in a block summary.
_ROW_OUTPUTS = {"row_mean": "mean", "row_lower": "lower", "row_upper": "upper"}


class EffectAccumulator:
    """Accumulates a comparison's block outputs into its summaries.

    Per draw, the sum of each scenario's outcome (and per group) in float64;
    per row, the posterior mean and central interval of each contrast, as
    the block program computed them (each block's :func:`block_summary`, in
    block order).

    Args:
        n_scenarios: Number of scenarios.
        n_draws: Number of draws.
        n_groups: Number of groups.
        n_rows: Number of rows.
        interval: Probability of the per-row intervals (recorded in the result).
    """

    def __init__(
        self, n_scenarios: int, n_draws: int, n_groups: int, n_rows: int, interval: float
    ) -> None:
        self.interval = interval
        self.sums = np.zeros((n_scenarios, n_draws), np.float64)
        self.group_sums = np.zeros((n_scenarios, n_draws, n_groups), np.float64)
        n_c = n_scenarios - 1
        self.mean = np.empty((n_c, n_rows), np.float32)
        self.lower = np.empty((n_c, n_rows), np.float32)
        self.upper = np.empty((n_c, n_rows), np.float32)

    def add_summaries(self, blocks: list[tuple[int, int, dict[str, np.ndarray]]]) -> None:
        """Take blocks' ``(r0, r1, block_summary(...))`` records, in block order."""
        for r0, r1, summary in blocks:
            self.sums += np.asarray(summary["sums"], np.float64)
            self.group_sums += np.asarray(summary["group_sums"], np.float64)
            self.mean[:, r0:r1] = summary["mean"]
            self.lower[:, r0:r1] = summary["lower"]
            self.upper[:, r0:r1] = summary["upper"]


def block_summary(outputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """Return one block's reductions as host arrays, for the accumulator or for shipping.

    Args:
        outputs: The block's ``sums``, ``group_sums``, ``row_mean``,
            ``row_lower`` and ``row_upper``.
    """
    summary = {name: np.asarray(outputs[name]) for name in ("sums", "group_sums")}
    for name, short in _ROW_OUTPUTS.items():
        summary[short] = np.asarray(outputs[name])
    return summary
