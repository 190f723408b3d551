"""Order statistics over the draws of each row, inside a compiled program.

Everything here runs under ``jit``. Two ways to order draws:

- :func:`order_statistics` finds a few chosen ranks (a quantile needs two)
  without ordering anything on CPUs: for each rank it bisects the bit
  patterns of the draws (float32 mapped to unsigned integers in the same
  order), counting the draws at or below the midpoint, 32 counts in all,
  over tiles of rows small enough to stay in cache; the next rank up is one
  more count. The result is the draw itself, bit for bit. On a 2-core CPU
  this takes 0.6 to 0.7 of the wall time of ``top_k`` tails (XLA spreads the
  counts over the cores; the CPU time is about the same:
  ``benchmarks/micro.py order``), and its cost does not grow with the rank
  (a median costs what a 3% quantile does, where a tail would hold half the
  draws). Elsewhere (GPUs), and for dtypes other than float32, it reads the
  ranks from :func:`tails`.
- :func:`tails` orders the ``low`` smallest and ``high`` largest values of
  every row (last axis), taken with :func:`jax.lax.top_k` (a selection,
  cheaper than sorting every draw), or one sort when the tails cover every
  draw; the highest-density interval needs whole tails.

Quantiles interpolate between order statistics as NumPy's default
(``method="linear"``) does, and the highest-density interval is the
narrowest window of consecutive sorted draws (ArviZ's definition), so both
equal what those libraries give on the same draws, to float32 rounding of
the interpolation.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Chosen",
    "Ordered",
    "Quantile",
    "Tails",
    "hdi_width",
    "largest",
    "order_statistics",
    "quantile_plan",
    "tail_sizes",
    "tails",
]

#: Rows a counting selection works on at once: a tile of 1,000 float32 draws
#: of 128 rows (500 KiB) stays in a CPU core's cache through its 32 counts.
TILE_ROWS = 128
_SIGN = np.uint32(0x80000000)
_ALL = np.uint32(0xFFFFFFFF)


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


class Ordered:
    """Order statistics of every row's draws, read by rank.

    Subclasses say which ranks they hold (:meth:`rank`); quantiles are read
    from them the same way.
    """

    def rank(self, r: int) -> jax.Array:
        """Return the order statistic of rank ``r`` (0-based)."""
        raise NotImplementedError

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


@dataclasses.dataclass(frozen=True)
class Chosen(Ordered):
    """Order statistics at chosen ranks.

    Attributes:
        values: Rank (0-based) to that order statistic of every row.
    """

    values: Mapping[int, jax.Array]

    def rank(self, r: int) -> jax.Array:
        """Return the order statistic of rank ``r``, one of those chosen."""
        if r not in self.values:
            raise ValueError(f"Rank {r} was not chosen (chosen: {sorted(self.values)}).")
        return self.values[r]


@dataclasses.dataclass(frozen=True)
class Tails(Ordered):
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


def order_statistics(values: jax.Array, ranks: Sequence[int]) -> Ordered:
    """Return the order statistics of ``ranks`` over the leading axis (the draws).

    On a CPU, and for float32 draws, by counting (see the module's text);
    otherwise from :func:`tails` of the sizes the ranks need. Either way each
    result is one of the row's draws, shaped like one draw.

    Args:
        values: Draws on the leading axis.
        ranks: Ranks (0-based, below the number of draws) to return.
    """
    n = int(values.shape[0])
    wanted = tuple(sorted(set(int(r) for r in ranks)))
    if any(r < 0 or r >= n for r in wanted):
        raise ValueError(f"Ranks {wanted} must lie in [0, {n}).")
    if not wanted:
        return Chosen({})
    if values.dtype != jnp.float32 or jax.default_backend() != "cpu":
        return tails(jnp.moveaxis(values, 0, -1), *tail_sizes(n, wanted))
    shape = values.shape[1:]
    flat = values.reshape(n, -1)
    width = int(flat.shape[1])
    if width == 0:
        return Chosen({r: jnp.zeros(shape, values.dtype) for r in wanted})
    tile = min(TILE_ROWS, width)
    pad = -width % tile
    blocks = jnp.pad(flat, ((0, 0), (0, pad))).reshape(n, -1, tile).transpose(1, 0, 2)
    found = jax.lax.map(functools.partial(_count_ranks, ranks=wanted), blocks)
    found = found.transpose(1, 0, 2).reshape(len(wanted), -1)[:, :width]
    return Chosen({r: found[i].reshape(shape) for i, r in enumerate(wanted)})


def _keys(x: jax.Array) -> jax.Array:
    """Map float32 values to uint32 in the same order (negatives flipped, positives offset)."""
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    return bits ^ jnp.where((bits >> 31) == 1, _ALL, _SIGN)


def _values(keys: jax.Array) -> jax.Array:
    """Invert :func:`_keys`."""
    bits = keys ^ jnp.where((keys >> 31) == 1, _SIGN, _ALL)
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _count_ranks(x: jax.Array, ranks: tuple[int, ...]) -> jax.Array:
    """Order statistics of ``ranks`` (sorted) of each column of ``x`` (draws, rows).

    The first rank of each run of consecutive ranks is bisected: the answer
    is the smallest key with at least ``rank + 1`` keys at or below it, and
    32 halvings of the rows' key range (every uint32) reach it. A rank one
    above a found one is that value again if enough draws tie with it,
    otherwise the smallest key above it: one count and one minimum.
    """
    keys = _keys(x)
    heads = [r for r in ranks if r - 1 not in ranks]
    need = jnp.asarray([r + 1 for r in heads], jnp.int32)[:, None]
    shape = (len(heads), keys.shape[1])
    lo = jnp.broadcast_to(jnp.min(keys, axis=0), shape)
    hi = jnp.broadcast_to(jnp.max(keys, axis=0), shape)

    def halve(_: int, bounds: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        count = jnp.sum((keys[None] <= mid[:, None]).astype(jnp.int32), axis=1)
        enough = count >= need
        return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    _, found = jax.lax.fori_loop(0, 32, halve, (lo, hi))
    out = dict(zip(heads, found, strict=True))
    for r in ranks:
        if r in out:
            continue
        below = out[r - 1]
        count = jnp.sum((keys <= below).astype(jnp.int32), axis=0)
        above = jnp.min(jnp.where(keys > below, keys, _ALL), axis=0)
        out[r] = jnp.where(count >= r + 1, below, above)
    return _values(jnp.stack([out[r] for r in ranks]))
