"""Host-side reductions of a scenario comparison: running sums and per-row intervals."""

from __future__ import annotations

import collections
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

__all__ = ["EffectAccumulator", "block_summary", "row_quantiles"]


class EffectAccumulator:
    """Accumulates a comparison's block outputs into its summaries.

    Per draw, the sum of each scenario's outcome (and per group) in float64;
    per row, the posterior mean and a central interval of each contrast,
    taken on ``threads`` host threads (a selection over draws for every row:
    the largest host cost), which NumPy lets run in parallel with each other
    and with the device. At most ``threads`` blocks wait. Blocks are
    collected one behind the runner, so the device computes the next block
    while the host reduces the last.

    Args:
        n_scenarios: Number of scenarios.
        n_draws: Number of draws.
        n_groups: Number of groups.
        n_rows: Number of rows.
        interval: Central interval probability.
        threads: Host threads for the per-row summaries.
    """

    def __init__(
        self,
        n_scenarios: int,
        n_draws: int,
        n_groups: int,
        n_rows: int,
        interval: float,
        threads: int,
    ) -> None:
        self.sums = np.zeros((n_scenarios, n_draws), np.float64)
        self.group_sums = np.zeros((n_scenarios, n_draws, n_groups), np.float64)
        n_c = n_scenarios - 1
        self.mean = np.empty((n_c, n_rows), np.float32)
        self.lower = np.empty((n_c, n_rows), np.float32)
        self.upper = np.empty((n_c, n_rows), np.float32)
        self.interval = interval
        self._threads = threads
        self._host = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dopax-effects")
        self._jobs: collections.deque[Future[None]] = collections.deque()
        self._pending: list[tuple[int, int, dict[str, Any]]] = []

    def _per_row(self, r0: int, r1: int, diffs_block: Any) -> None:
        mean, lo, hi = per_row_summary(diffs_block, self.interval)
        self.mean[:, r0:r1] = mean
        self.lower[:, r0:r1] = lo
        self.upper[:, r0:r1] = hi

    def add_summaries(self, blocks: list[tuple[int, int, dict[str, np.ndarray]]]) -> None:
        """Take blocks already reduced elsewhere (:func:`block_summary`), in block order."""
        for r0, r1, summary in blocks:
            self.sums += np.asarray(summary["sums"], np.float64)
            self.group_sums += np.asarray(summary["group_sums"], np.float64)
            self.mean[:, r0:r1] = summary["mean"]
            self.lower[:, r0:r1] = summary["lower"]
            self.upper[:, r0:r1] = summary["upper"]

    def _collect(self, r0: int, r1: int, out: dict[str, Any]) -> None:
        self.sums += np.asarray(out["sums"], np.float64)
        self.group_sums += np.asarray(out["group_sums"], np.float64)
        while len(self._jobs) >= self._threads:
            self._jobs.popleft().result()
        self._jobs.append(self._host.submit(self._per_row, r0, r1, out["diffs"]))

    def add(self, r0: int, r1: int, out: dict[str, Any]) -> None:
        """Take one block's ``sums``, ``group_sums`` and ``diffs`` (rows ``r0:r1``)."""
        self._pending.append((r0, r1, out))
        if len(self._pending) > 1:
            self._collect(*self._pending.pop(0))

    def finish(self) -> None:
        """Collect the last block and wait for every per-row summary."""
        for item in self._pending:
            self._collect(*item)
        self._pending = []
        while self._jobs:
            self._jobs.popleft().result()
        self._host.shutdown(wait=True)

    def abort(self) -> None:
        """Drop what is pending and stop the host threads."""
        for job in self._jobs:
            job.cancel()
        self._pending = []
        self._host.shutdown(wait=True)


def per_row_summary(diffs_block: Any, interval: float) -> tuple[np.ndarray, ...]:
    """Return the per-row mean and central interval of a block's contrasts ``(D, C, R)``.

    Args:
        diffs_block: Each contrast per draw and row.
        interval: Central interval probability.
    """
    diffs = np.asarray(diffs_block)
    lo, hi = row_quantiles(diffs, ((1 - interval) / 2, (1 + interval) / 2))
    return diffs.mean(axis=0), lo, hi


def block_summary(outputs: dict[str, Any], interval: float) -> dict[str, np.ndarray]:
    """Reduce one block's outputs as :class:`EffectAccumulator` does, for shipping.

    Args:
        outputs: The block's ``sums``, ``group_sums`` and ``diffs``.
        interval: Central interval probability.
    """
    mean, lo, hi = per_row_summary(outputs["diffs"], interval)
    return {
        "sums": np.asarray(outputs["sums"]),
        "group_sums": np.asarray(outputs["group_sums"]),
        "mean": mean,
        "lower": lo,
        "upper": hi,
    }


def row_quantiles(diffs: np.ndarray, probs: tuple[float, ...]) -> list[np.ndarray]:
    """Return quantiles over the draw axis (0) of ``diffs``, as ``np.quantile`` does.

    Equal to ``np.quantile(diffs, probs, axis=0)`` (the default linear
    method), but selects along a contiguous last axis with ``np.partition``,
    which is faster and releases the GIL, so blocks run in parallel threads.

    Args:
        diffs: Draws first, ``(D, ...)``.
        probs: Probabilities in ``[0, 1]``.
    """
    n = diffs.shape[0]
    rows = np.ascontiguousarray(np.moveaxis(diffs, 0, -1))
    positions = [p * (n - 1) for p in probs]
    below = [int(np.floor(v)) for v in positions]
    kth = sorted({k for b in below for k in (b, min(b + 1, n - 1))})
    part = np.partition(rows, kth, axis=-1)
    out = []
    for v, b in zip(positions, below, strict=True):
        a_ = part[..., b]
        b_ = part[..., min(b + 1, n - 1)]
        t = np.asarray(v - b, dtype=rows.dtype)
        diff = b_ - a_
        # numpy's lerp: from the nearer end, so t = 0 and t = 1 are exact
        value = a_ + diff * t if t < 0.5 else b_ - diff * (1 - t)
        out.append(value)
    return out
