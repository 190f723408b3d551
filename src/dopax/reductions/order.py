"""Order statistics over the draws of each row, inside a compiled program.

Everything here runs under ``jit`` on arrays whose *last* axis indexes the
draws. Only the draws' tails that an answer needs are ordered: the ``low``
smallest and ``high`` largest values of every row, taken with
:func:`jax.lax.top_k` (a selection, cheaper than sorting every draw); a full
sort is used only when the tails cover every draw. Quantiles interpolate
between order statistics as NumPy's default (``method="linear"``) does, and
the highest-density interval is the narrowest window of consecutive sorted
draws (ArviZ's definition), so both equal what those libraries give on the
same draws, to float32 rounding of the interpolation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Quantile", "Tails", "hdi_width", "largest", "quantile_plan", "tail_sizes", "tails"]


@dataclasses.dataclass(frozen=True)
class Quantile:
    """Where a quantile of ``n`` draws lies: between two ranks, NumPy's ``linear`` method.

    Attributes:
        below: Rank (0-based) of the order statistic at or below the quantile.
        above: Rank of the next order statistic (``below`` at the top).
        weight: Interpolation weight of ``above``, in ``[0, 1)``.
    """

    below: int
    above: int
    weight: float


def quantile_plan(n: int, prob: float) -> Quantile:
    """Return the ranks and weight of the ``prob`` quantile of ``n`` draws.

    The virtual index is ``prob * (n - 1)`` (Hyndman and Fan's type 7,
    NumPy's default), computed in float64 as NumPy does.

    Args:
        n: Number of draws.
        prob: Probability in ``[0, 1]``.
    """
    index = float(np.float64(n - 1) * np.float64(prob))
    below = min(max(math.floor(index), 0), n - 1)
    return Quantile(below, min(below + 1, n - 1), index - below)


def hdi_width(n: int, prob: float) -> int:
    """Return the number of draws a highest-density interval of ``prob`` spans, minus one.

    Windows of ``floor(prob * n) + 1`` consecutive sorted draws are the
    candidate intervals (ArviZ's definition).

    Args:
        n: Number of draws.
        prob: Probability mass, in ``(0, 1)``.
    """
    return math.floor(prob * n)


@dataclasses.dataclass(frozen=True)
class Tails:
    """The ordered tails of every row's draws.

    Attributes:
        n: Number of draws.
        low: The ``k_low`` smallest draws, ascending (last axis).
        high: The ``k_high`` largest draws, ascending (last axis).
    """

    n: int
    low: jax.Array
    high: jax.Array

    def rank(self, r: int) -> jax.Array:
        """Return the order statistic of rank ``r`` (0-based), which a tail must hold."""
        k_low = self.low.shape[-1]
        if r < k_low:
            return self.low[..., r]
        start = self.n - self.high.shape[-1]
        if r < start:
            raise ValueError(f"Rank {r} of {self.n} draws lies in neither tail.")
        return self.high[..., r - start]

    def quantile(self, plan: Quantile) -> jax.Array:
        """Return a quantile, interpolated as NumPy's ``linear`` method does."""
        a = self.rank(plan.below)
        if plan.weight == 0.0:
            return a
        b = self.rank(plan.above)
        t = jnp.asarray(plan.weight, a.dtype)
        diff = b - a
        # NumPy's interpolation: from the nearer end, so both ends are exact
        return a + diff * t if plan.weight < 0.5 else b - diff * (1 - t)

    def hdi(self, prob: float) -> tuple[jax.Array, jax.Array]:
        """Return the narrowest interval of ``floor(prob * n) + 1`` consecutive draws.

        The first narrowest window wins ties. Needs ``n - floor(prob * n)``
        draws in each tail.
        """
        count = self.n - hdi_width(self.n, prob)
        if self.low.shape[-1] < count or self.high.shape[-1] < count:
            raise ValueError(f"The interval needs {count} draws in each tail.")
        starts = self.low[..., :count]
        ends = self.high[..., self.high.shape[-1] - count :]
        best = jnp.argmin(ends - starts, axis=-1)[..., None]
        lower = jnp.take_along_axis(starts, best, axis=-1)[..., 0]
        upper = jnp.take_along_axis(ends, best, axis=-1)[..., 0]
        return lower, upper


def tail_sizes(n: int, ranks: Sequence[int]) -> tuple[int, int]:
    """Return how many of the smallest and of the largest draws hold ``ranks``.

    Each rank goes to the nearer end.

    Args:
        n: Number of draws.
        ranks: Ranks (0-based) that will be read.
    """
    low = [r for r in ranks if r < n - 1 - r]
    high = [r for r in ranks if r >= n - 1 - r]
    return (max(low) + 1 if low else 0), (n - min(high) if high else 0)


def tails(values: jax.Array, k_low: int, k_high: int) -> Tails:
    """Return the ``k_low`` smallest and ``k_high`` largest values along the last axis.

    Two selections (:func:`jax.lax.top_k`) when the tails are disjoint,
    otherwise one sort.

    Args:
        values: Draws on the last axis (any float dtype).
        k_low: Number of smallest values wanted.
        k_high: Number of largest values wanted.
    """
    n = int(values.shape[-1])
    k_low, k_high = min(k_low, n), min(k_high, n)
    if k_low + k_high >= n:
        ordered = jnp.sort(values, axis=-1)
        return Tails(n, ordered[..., :k_low], ordered[..., n - k_high :])
    low = -largest(-values, k_low) if k_low else values[..., :0]
    high = largest(values, k_high)[..., ::-1] if k_high else values[..., :0]
    return Tails(n, low, high)


def largest(values: jax.Array, k: int) -> jax.Array:
    """Return the ``k`` largest values along the last axis, descending.

    The selection's result passes through an optimisation barrier: XLA turns
    ``top_k`` into a sort followed by a slice and back into its selection
    routine only when that slice is the sort's one use, which further slices
    of the result (taken by the callers) would otherwise break, leaving a
    full sort (several times slower on CPU).

    Args:
        values: Values, ordered along the last axis.
        k: How many to keep.
    """
    return jax.lax.optimization_barrier(jax.lax.top_k(values, k)[0])  # type: ignore[no-any-return]
