"""Order statistics over the draws of each row, inside a compiled program.

Everything here runs under ``jit``. Two ways to order draws:

- :func:`order_statistics` finds a few chosen ranks (a quantile needs two)
  without ordering anything on CPUs: for each rank it searches the bit
  patterns of the draws (float32 mapped to unsigned integers in the same
  order), counting the draws at or below a probe interpolated between
  values known to lie below and above the rank (ten to twenty counts for a
  tile of a smooth distribution, a bounded number for any), over tiles of rows small
  enough to stay in cache; the next rank up is one more count. The result
  is the draw itself, bit for bit, and its cost hardly depends on the rank
  (a median costs what a 3% quantile does, where a tail would hold half the
  draws); ``benchmarks/micro.py order`` measures it against ``top_k``
  tails. Elsewhere (GPUs), and for dtypes other than float32, it reads the
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
import statistics
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
#: of 128 rows (500 KiB) stays in a CPU core's cache through its counts.
TILE_ROWS = 128
_SIGN = np.uint32(0x80000000)
_ALL = np.uint32(0xFFFFFFFF)
_NORMAL = statistics.NormalDist()
_NAN_KEY = np.uint32(0x7FC00000) ^ _SIGN


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
    """Map float32 values to uint32 in the same order (negatives flipped, positives offset).

    Every NaN, whatever its sign bit (a NaN computed on a CPU usually has
    it set), maps to the key of the positive quiet NaN, above infinity: NaNs
    order last, as NumPy sorts them, and come back as that NaN.
    """
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    keys = bits ^ jnp.where((bits >> 31) == 1, _ALL, _SIGN)
    return jnp.where(jnp.isnan(x), _NAN_KEY, keys)


def _values(keys: jax.Array) -> jax.Array:
    """Invert :func:`_keys`."""
    bits = keys ^ jnp.where((keys >> 31) == 1, _SIGN, _ALL)
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _count_ranks(x: jax.Array, ranks: tuple[int, ...]) -> jax.Array:
    """Order statistics of ``ranks`` (sorted) of each column of ``x`` (draws, rows).

    The first rank of each run of consecutive ranks is searched for
    (:func:`_search`). A rank one above a found one is that value again if
    enough draws tie with it, otherwise the smallest key above it: one count
    and one minimum.
    """
    keys = _keys(x)
    heads = [r for r in ranks if r - 1 not in ranks]
    out = dict(zip(heads, _search(x, keys, [r + 1 for r in heads]), strict=True))
    for r in ranks:
        if r in out:
            continue
        below = out[r - 1]
        count = jnp.sum((keys <= below).astype(jnp.int32), axis=0)
        above = jnp.min(jnp.where(keys > below, keys, _ALL), axis=0)
        out[r] = jnp.where(count >= r + 1, below, above)
    return _values(jnp.stack([out[r] for r in ranks]))


def _first_probes(x: jax.Array, needs: list[int]) -> tuple[jax.Array, jax.Array]:
    """Two values per count in ``needs`` likely to straddle it, each ``(counts, columns)``.

    The normal distribution with the draws' mean and standard deviation puts
    the needed count between them with a margin of three binomial standard
    deviations. Only the number of steps depends on them.
    """
    n = int(x.shape[0])
    mean = jnp.mean(x, axis=0)
    sd = jnp.sqrt(jnp.maximum(jnp.mean(jnp.square(x - mean), axis=0), 0.0))
    z_low, z_high = [], []
    for need in needs:
        p = (need - 0.5) / n
        margin = 3.0 * math.sqrt(p * (1.0 - p) / n)
        z_low.append(_NORMAL.inv_cdf(max(p - margin, 0.5 / n)))
        z_high.append(_NORMAL.inv_cdf(min(p + margin, 1.0 - 0.5 / n)))
    low = mean + jnp.asarray(z_low, jnp.float32)[:, None] * sd
    high = mean + jnp.asarray(z_high, jnp.float32)[:, None] * sd
    return low, high


def _search(x: jax.Array, keys: jax.Array, needs: list[int]) -> jax.Array:
    """For each count in ``needs``, the smallest key of each column with that many at or below it.

    Each column keeps a range ``[lo, hi]`` that holds the answer, with
    ``below`` keys under ``lo`` (fewer than needed) and ``upto`` keys at or
    below ``hi`` (enough); it starts as the column's smallest and largest
    keys, narrowed by a first count at two probes around where a normal
    distribution of the same mean and spread puts the answer
    (:func:`_first_probes`). A step counts the keys at or below one probe
    per column and keeps the side that holds the answer. The probe is where
    the needed count falls when the draws are spread evenly in value between
    ``lo`` and ``hi``, which a smooth distribution nearly is, so a few steps
    narrow a thousand draws to the answer. After a step that did not halve the
    number of draws in the range, the next probe halves the range of keys
    instead, and so does any probe between values whose difference is not
    finite (an infinite or NaN end, or one that overflows). So of any two
    consecutive steps one halves the draws in the range (at most
    ``log2(draws)`` times) or the keys (at most 32 times), and
    ``2 * (draws.bit_length() + 32) + 2`` steps end every column. A column
    is done when its range is one key, or when ``below`` is one short of the
    count (the answer is the smallest key from ``lo``), or ``upto`` is the
    count (the largest key to ``hi``); one last pass reads those. The steps
    stop when every column is done.

    Args:
        x: The draws, ``(draws, columns)``.
        keys: Their keys.
        needs: Counts, each in ``[1, draws]``.

    Returns:
        ``(len(needs), columns)`` keys, each one of the column's keys.
    """
    need = jnp.asarray(needs, jnp.int32)[:, None]
    shape = (len(needs), keys.shape[1])
    max_steps = 2 * (int(keys.shape[0]).bit_length() + 32) + 2
    lo = jnp.broadcast_to(jnp.min(keys, axis=0), shape)
    hi = jnp.broadcast_to(jnp.max(keys, axis=0), shape)
    below = jnp.zeros(shape, jnp.int32)
    upto = jnp.full(shape, keys.shape[0], jnp.int32)
    low, high = (jnp.clip(_keys(v), lo, hi - 1) for v in _first_probes(x, needs))
    high = jnp.maximum(low, high)  # a mean or spread that is not finite guesses anything
    both = jnp.concatenate([low, high])
    counts = jnp.sum((keys[None] <= both[:, None]).astype(jnp.int32), axis=1)
    c_low, c_high = counts[: len(needs)], counts[len(needs) :]
    unsplit = lo == hi
    # low <= high: the answer is at or below low, between them, or above high
    at_low, at_high = (c_low >= need) & ~unsplit, (c_high >= need) & ~unsplit
    lo = jnp.where(at_low | unsplit, lo, jnp.where(at_high, low + 1, high + 1))
    below = jnp.where(at_low | unsplit, below, jnp.where(at_high, c_low, c_high))
    hi = jnp.where(at_low, low, jnp.where(at_high, high, hi))
    upto = jnp.where(at_low, c_low, jnp.where(at_high, c_high, upto))

    def done(lo: jax.Array, hi: jax.Array, below: jax.Array, upto: jax.Array) -> jax.Array:
        return (lo == hi) | (below == need - 1) | (upto == need)

    State = tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]

    def going(state: State) -> jax.Array:
        step, lo, hi, below, upto, _ = state
        return (step < max_steps) & jnp.any(~done(lo, hi, below, upto))

    def narrow(state: State) -> State:
        step, lo, hi, below, upto, halve = state
        v_lo, v_hi = _values(lo), _values(hi)
        share = (need.astype(jnp.float32) - 0.5 - below) / (upto - below).astype(jnp.float32)
        width = v_hi - v_lo
        guess = jnp.clip(_keys(v_lo + share * width), lo, hi - 1)
        mid = jnp.where(jnp.isfinite(width) & ~halve, guess, lo + (hi - lo) // 2)
        count = jnp.sum((keys[None] <= mid[:, None]).astype(jnp.int32), axis=1)
        enough = count >= need
        keep = done(lo, hi, below, upto)
        lo2 = jnp.where(keep | enough, lo, mid + 1)
        hi2 = jnp.where(keep | ~enough, hi, mid)
        below2 = jnp.where(keep | enough, below, count)
        upto2 = jnp.where(keep | ~enough, upto, count)
        return step + 1, lo2, hi2, below2, upto2, 2 * (upto2 - below2) > upto - below

    start: State = (jnp.asarray(0, jnp.int32), lo, hi, below, upto, jnp.zeros(shape, bool))
    _, lo, hi, below, upto, _ = jax.lax.while_loop(going, narrow, start)
    first = jnp.min(jnp.where(keys[None] >= lo[:, None], keys[None], _ALL), axis=1)
    last = jnp.max(jnp.where(keys[None] <= hi[:, None], keys[None], 0), axis=1)
    return jnp.where(lo == hi, lo, jnp.where(below == need - 1, first, last))
