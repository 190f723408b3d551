"""Row-keyed samplers: each element of a draw has its own random stream.

NumPyro's samplers for several families split their key before drawing
(``StudentT``, ``Beta``, ``Dirichlet``, ``BetaBinomial``, zero-inflated
distributions), loop over elements with keys split from the flat element
index (``Binomial``, ``Gamma`` with several values per row), or need JAX's
default key type (``jax.random.poisson``: ``Poisson``, ``GammaPoisson`` and
the negative binomials). None of these keep the row identity of dopax's keys.
This module draws those families itself, from uniforms addressed by
``(site key, stream, row, element)``:

* element ``(i, j)`` of a block at row offset ``o`` (``j`` the flat index
  within the row) takes the two words of ``Threefry(key, (o + i, j))``, two
  uniforms in float32, so row ``o + i`` receives the same uniforms whatever
  batch it falls in;
* the key of stream ``(role, m)`` is ``(w1, w2 + role * 2**24 + m)`` for a
  site's key words ``(w1, w2)``: the role says which part of a sampler draws
  (a proposal, the gate of a zero-inflated law, ...), ``m`` numbers the
  proposals of a rejection sampler. Threefry streams under distinct keys are
  independent, whatever the keys. Composite distributions (a gamma inside a
  Poisson, a base inside a zero-inflated law) give each part child key words,
  hashed from the site's, so no two parts share a stream.

The algorithms:

* **Poisson**: for rates below 10, inversion by sequential search over the
  first 36 cumulative probabilities (a Poisson(10) count exceeds 36 with
  probability 1.7e-10); from 10, Hörmann's transformed rejection with squeeze
  (PTRS, 1993). Both work with logarithms of ratios that cancel the large
  terms of ``log k!`` analytically, so they stay exact at rates of 1e6 in
  float32, where ``jax.random.poisson`` does not.
* **Binomial**: inversion as for Poisson when ``n min(p, 1 - p) < 10``,
  Hörmann's BTRS (1993) otherwise.
* **Gamma**: Marsaglia and Tsang (2000); a shape ``a < 1`` draws
  ``Gamma(a + 1) * U ** (1 / a)``, computed in log space.
* **StudentT**: ``Z / sqrt(G / (df / 2))`` with ``G ~ Gamma(df / 2)``.
  **Beta** and **Dirichlet**: normalised gammas (in log space, so small
  concentrations do not underflow; clipped to ``[tiny, 1 - eps]`` as NumPyro
  clips them). **GammaPoisson** and the negative binomials:
  ``Poisson(Gamma)``. **BetaBinomial**: ``Binomial(Beta)``.
  **Zero-inflated** distributions: a uniform against the gate, then the base.
* **Categorical**: inversion of the cumulative probabilities with one uniform.

Rejection samplers are exact: an element's value is its first accepted
proposal ``m = 0, 1, ...``, whatever the batch. Elements are processed in
tiles of 16,384; a tile draws proposals until each of its elements has
accepted one, so its cost is that of its slowest element: with rejection
rates of at most 5% (Marsaglia-Tsang), 25% (PTRS at rate 10, 11% at 1e4) and
29% (BTRS at ``n p = 10``), about 4, 8 and 9 passes over the tile. The loop
stops after 65,536 proposals, which a tile reaches with a probability below
1e-35000.

Approximations, all at float32 resolution: uniforms take 23 bits, so a
normal variate lies within +-5.3 (probability of a larger one: 1.2e-7, as
for ``jax.random.normal``), and inversion resolves cumulative probabilities
to 2**-24 (total variation distance from the exact law below 36 x 2**-24 =
2.2e-6, from the cumulative sums' rounding and the uniform's grid). Counts
and rates above 2**24 are not represented exactly in float32.

All samplers are elementwise in their parameters and counters. Under
``jax.vmap`` (dopax vectorises draws) each runs once on the whole batch
(``jax.custom_batching.custom_vmap``), so its branches and loops stay real
branches and loops over the batch rather than computing both sides.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax import lax
from numpyro.distributions import conjugate, discrete

from dopax.sampling.row_keys import ROW_KEY_IMPL
from dopax.sampling.threefry import threefry2x32

__all__ = ["row_sample", "row_sampled"]
from dopax.sampling.variates import (
    _CATEGORY,
    _GATE,
    _MAX_PROPOSALS,
    _NORMAL,
    _TAG_CHILD,
    _U32,
    _binomial_leaf,
    _clip_unit,
    _common_float,
    _count_dtype,
    _float,
    _log_gamma_leaf,
    _poisson_leaf,
    _std_normal,
    _stream,
    _uniforms,
)

# --------------------------------------------------------------------------- sources


@dataclasses.dataclass(frozen=True)
class _Source:
    """The key words of one site (or one part of it) and the batch's row offset."""

    w1: jax.Array
    w2: jax.Array
    offset: jax.Array

    def child(self, index: Any) -> _Source:
        w1, w2 = threefry2x32(self.w1, self.w2, _TAG_CHILD, jnp.asarray(index, _U32))
        return _Source(w1, w2, self.offset)

    def row_key(self) -> jax.Array:
        """A row-offset key (:data:`dopax.sampling.row_keys.ROW_KEY_IMPL`) with these words."""
        data = jnp.stack([jnp.asarray(self.w1, _U32), jnp.asarray(self.w2, _U32), self.offset])
        return jax.random.wrap_key_data(data, impl=ROW_KEY_IMPL)

    def args(self, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """Key words and counters ``(w1, w2, hi, lo)`` for an array of ``shape``.

        Every one has the rank of ``shape``: row ``i`` gets ``hi = offset + i``,
        flat position ``j`` within the row gets ``lo = j``.
        """
        rank = len(shape)
        ones = (1,) * rank
        w1 = jnp.reshape(self.w1, ones)
        w2 = jnp.reshape(self.w2, ones)
        if rank == 0:
            return w1, w2, self.offset, jnp.zeros((), _U32)
        rest = math.prod(shape[1:])
        if rest >= 1 << 31:
            raise ValueError("A single row of a random site may hold at most 2**31 elements.")
        hi = self.offset + lax.broadcasted_iota(_U32, (shape[0], *ones[1:]), 0)
        lo = jnp.arange(rest, dtype=_U32).reshape((1, *shape[1:]))
        return w1, w2, hi, lo


def _log_gamma(src: _Source, alpha: Any, shape: tuple[int, ...]) -> jax.Array:
    return _log_gamma_leaf(*src.args(shape), _float(alpha, shape))


def _poisson_counts(src: _Source, rate: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return _poisson_leaf(*src.args(shape), _float(rate, shape))


def _binomial_counts(src: _Source, n: Any, p: Any, shape: tuple[int, ...]) -> jax.Array:
    p = _float(p, shape)
    return _binomial_leaf(*src.args(shape), _float(n, shape).astype(p.dtype), p)


# --------------------------------------------------------------------------- families


def _gamma(d: Any, src: _Source, shape: tuple[int, ...]) -> jax.Array:
    dtype = _common_float(d.concentration, d.rate)
    log_g = _log_gamma(src, jnp.asarray(d.concentration, dtype), shape)
    return jnp.exp(log_g) / jnp.asarray(d.rate, dtype)


def _student_t(d: Any, src: _Source, shape: tuple[int, ...]) -> jax.Array:
    dtype = _common_float(d.df, d.loc, d.scale)
    half_df = _float(jnp.asarray(d.df, dtype), shape) * 0.5
    log_g = _log_gamma(src.child(1), half_df, shape)
    w1, w2, hi, lo = src.args(shape)
    u, _ = _uniforms(*_stream(w1, w2, _NORMAL), 0, hi, lo, dtype)
    t = _std_normal(u) * jnp.exp(-0.5 * (log_g - jnp.log(half_df)))
    return jnp.asarray(d.loc, dtype) + jnp.asarray(d.scale, dtype) * t


def _beta_probs(src: _Source, c1: Any, c0: Any, shape: tuple[int, ...]) -> jax.Array:
    # both gammas in one call, side by side on a trailing axis
    dtype = _common_float(c1, c0)
    pair = jnp.stack([_float(jnp.asarray(c, dtype), shape) for c in (c1, c0)], axis=-1)
    log_g = _log_gamma(src, pair, (*shape, 2))
    return _clip_unit(jax.nn.sigmoid(log_g[..., 0] - log_g[..., 1]))


def _beta(d: Any, src: _Source, shape: tuple[int, ...]) -> jax.Array:
    return _beta_probs(src, d.concentration1, d.concentration0, shape)


def _dirichlet(d: Any, src: _Source, shape: tuple[int, ...]) -> jax.Array:
    log_g = _log_gamma(src, d.concentration, shape)
    return _clip_unit(jax.nn.softmax(log_g, axis=-1))


def _poisson(d: Any, src: _Source, shape: tuple[int, ...]) -> jax.Array:
    return _poisson_counts(src, d.rate, shape).astype(_count_dtype())


def _gamma_poisson(d: Any, src: _Source, shape: tuple[int, ...]) -> jax.Array:
    dtype = _common_float(d.concentration, d.rate)
    log_g = _log_gamma(src.child(1), jnp.asarray(d.concentration, dtype), shape)
    rate = jnp.exp(log_g) / jnp.asarray(d.rate, dtype)
    return _poisson_counts(src, rate, shape).astype(_count_dtype())


def _binomial(d: Any, src: _Source, shape: tuple[int, ...]) -> jax.Array:
    counts = _binomial_counts(src, d.total_count, d.probs, shape)
    return counts.astype(jnp.asarray(d.total_count).dtype)


def _beta_binomial(d: Any, src: _Source, shape: tuple[int, ...]) -> jax.Array:
    probs = _beta_probs(src.child(1), d.concentration1, d.concentration0, shape)
    counts = _binomial_counts(src, d.total_count, probs, shape)
    return counts.astype(jnp.asarray(d.total_count).dtype)


def _zero_inflated(d: Any, src: _Source, shape: tuple[int, ...]) -> jax.Array:
    base = _any(d.base_dist, src.child(1), shape)
    gate = _float(d.gate, shape)
    w1, w2, hi, lo = src.args(shape)
    u, _ = _uniforms(*_stream(w1, w2, _GATE), 0, hi, lo, gate.dtype)
    return jnp.where(u < gate, jnp.zeros((), base.dtype), base)


def _categorical(d: Any, src: _Source, shape: tuple[int, ...]) -> jax.Array:
    if isinstance(d, discrete.CategoricalLogits):
        logits = jnp.asarray(d.logits)
        if not jnp.issubdtype(logits.dtype, jnp.floating):
            logits = logits.astype(jnp.result_type(float))
        weights = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    else:
        weights = jnp.asarray(d.probs)
        if not jnp.issubdtype(weights.dtype, jnp.floating):
            weights = weights.astype(jnp.result_type(float))
    w1, w2, hi, lo = src.args(shape)
    u, _ = _uniforms(*_stream(w1, w2, _CATEGORY), 0, hi, lo, weights.dtype)
    # the index is the number of partial sums of the weights below u * total
    n_categories = weights.shape[-1]
    if n_categories > 16:
        cum = jnp.cumsum(weights, axis=-1)
        below = cum[..., :-1] < (u * cum[..., -1])[..., None]
        return jnp.sum(below, axis=-1, dtype=_count_dtype())
    partial = [weights[..., 0]]
    for k in range(1, n_categories):
        partial.append(partial[-1] + weights[..., k])
    threshold = u * partial[-1]
    count = jnp.zeros(jnp.broadcast_shapes(threshold.shape, shape), _count_dtype())
    for below in partial[:-1]:
        count = count + (below < threshold).astype(count.dtype)
    return count


def _beta_negative_binomial(d: Any, src: _Source, shape: tuple[int, ...]) -> jax.Array:
    probs = _beta_probs(src.child(1), d.concentration1, d.concentration0, shape)
    counts = conjugate.NegativeBinomialProbs(d.n, probs)
    return _gamma_poisson(counts, src.child(2), shape)


def _any(d: Any, src: _Source, shape: tuple[int, ...]) -> jax.Array:
    """Draw ``d`` with shape ``shape``: here if :func:`row_sampled`, else by its own sampler.

    Its own sampler gets a row-offset key with the words of ``src`` (draws from
    bits, such as the normal family's, keep rows apart; the planner's probe
    catches those that do not).
    """
    if row_sampled(d):
        return _draw(d, src, shape)
    own = tuple(d.batch_shape) + tuple(d.event_shape)
    if own and shape[len(shape) - len(own) :] == own:
        return d.sample(src.row_key(), shape[: len(shape) - len(own)])
    return d.expand(shape[: len(shape) - len(d.event_shape)]).sample(src.row_key())


def _mixture(d: Any, src: _Source, shape: tuple[int, ...]) -> jax.Array:
    event = tuple(d.event_shape)
    batch = shape[: len(shape) - len(event)]
    if isinstance(d, dist.MixtureSameFamily):
        parts = _any(d.component_distribution, src.child(1), (*batch, d.mixture_size, *event))
    else:
        draws = [_any(c, src.child(2 + i), shape) for i, c in enumerate(d.component_distributions)]
        parts = jnp.stack(draws, axis=len(batch))
    which = _any(d.mixing_distribution, src.child(0), batch)
    index = jnp.reshape(which, (*batch, 1, *(1,) * len(event)))
    return jnp.take_along_axis(parts, index.astype(jnp.int32), axis=len(batch)).squeeze(len(batch))


def _hurdle(d: Any, src: _Source, shape: tuple[int, ...]) -> jax.Array:
    base = _any(d.base_dist, src.child(1), shape)
    if d.support.is_discrete:
        # the positive part is the base law given a positive value: redraw the
        # zeros from fresh streams until none is left (as NumPyro does; the
        # number of rounds grows as 1 / P(base > 0))
        def more(state: tuple[jax.Array, jax.Array]) -> jax.Array:
            return (state[0] < _MAX_PROPOSALS) & jnp.any(state[1] == 0)

        def redraw(state: tuple[jax.Array, jax.Array]) -> Any:
            m, x = state
            fresh = _any(d.base_dist, src.child(m), shape)
            return m + 1, jnp.where(x == 0, fresh, x)

        base = lax.while_loop(more, redraw, (jnp.int32(2), base))[1]
    gate = _float(d.gate, shape)
    w1, w2, hi, lo = src.args(shape)
    u, _ = _uniforms(*_stream(w1, w2, _GATE), 0, hi, lo, gate.dtype)
    return jnp.where(u < gate, jnp.zeros((), base.dtype), base)


_Family = Callable[[Any, _Source, tuple[int, ...]], jax.Array]

#: Families drawn here, with the class whose ``sample`` they replace. A subclass
#: that overrides ``sample`` keeps its own sampler. Classes newer than the oldest
#: supported NumPyro are taken when it has them.
_KNOWN: tuple[tuple[Any, _Family], ...] = (
    (dist.Gamma, _gamma),
    (dist.StudentT, _student_t),
    (dist.Beta, _beta),
    (dist.Dirichlet, _dirichlet),
    (discrete.Poisson, _poisson),
    (conjugate.GammaPoisson, _gamma_poisson),
    (discrete.BinomialProbs, _binomial),
    (discrete.BinomialLogits, _binomial),
    (conjugate.BetaBinomial, _beta_binomial),
    (discrete.ZeroInflatedProbs, _zero_inflated),
    (discrete.CategoricalProbs, _categorical),
    (discrete.CategoricalLogits, _categorical),
    (getattr(conjugate, "BetaNegativeBinomial", None), _beta_negative_binomial),  # numpyro 0.21
    (getattr(discrete, "HurdleProbs", None), _hurdle),  # numpyro 0.22
    (dist.MixtureSameFamily, _mixture),
    (dist.MixtureGeneral, _mixture),
)
_FAMILIES: tuple[tuple[type[dist.Distribution], _Family], ...] = tuple(
    (cls, draw) for cls, draw in _KNOWN if cls is not None
)
_WRAPPERS: tuple[type[dist.Distribution], ...] = (
    dist.ExpandedDistribution,
    dist.Independent,
    dist.MaskedDistribution,
)


def _same_sampler(d: Any, cls: type[dist.Distribution]) -> bool:
    """Whether ``d`` is a ``cls`` that samples with ``cls``'s own method."""
    return isinstance(d, cls) and type(d).sample is cls.sample


def _family(d: Any) -> _Family | None:
    for cls, draw in _FAMILIES:
        if _same_sampler(d, cls):
            return draw
    return None


def row_sampled(d: Any) -> bool:
    """Whether :func:`row_sample` draws distribution ``d`` (wrappers included).

    Args:
        d: A NumPyro distribution.
    """
    if any(_same_sampler(d, cls) for cls in _WRAPPERS):
        return row_sampled(d.base_dist)
    if _same_sampler(d, dist.TransformedDistribution):
        own = dist.TransformedDistribution.sample_with_intermediates
        return type(d).sample_with_intermediates is own and row_sampled(d.base_dist)
    return _family(d) is not None


def _draw(d: Any, src: _Source, shape: tuple[int, ...]) -> jax.Array:
    if any(_same_sampler(d, cls) for cls in _WRAPPERS):
        return _draw(d.base_dist, src, shape)
    if _same_sampler(d, dist.TransformedDistribution):
        base_shape = shape
        for transform in reversed(d.transforms):
            base_shape = tuple(transform.inverse_shape(base_shape))
        x = _draw(d.base_dist, src, base_shape)
        for transform in d.transforms:
            x = transform(x)
        return x
    family = _family(d)
    assert family is not None
    return family(d, src, shape)


def row_sample(
    d: Any, words: jax.Array, row_offset: Any, sample_shape: tuple[int, ...] = ()
) -> jax.Array:
    """Draw ``d`` with ``sample_shape`` from row-keyed streams (see the module docstring).

    Args:
        d: A distribution for which :func:`row_sampled` is true.
        words: The site's two key words (``uint32``).
        row_offset: Global index of the batch's first row (axis 0 of the value).
        sample_shape: Leading sample dimensions, as for ``d.sample``.

    Returns:
        An array of shape ``sample_shape + d.batch_shape + d.event_shape``.
    """
    shape = tuple(sample_shape) + tuple(d.batch_shape) + tuple(d.event_shape)
    src = _Source(
        jnp.asarray(words[0], _U32), jnp.asarray(words[1], _U32), jnp.asarray(row_offset, _U32)
    )
    return _draw(d, src, shape)
