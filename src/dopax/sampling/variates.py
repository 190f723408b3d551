"""Uniform streams, exact rejection and the core count and gamma samplers of the row-keyed draws.

The building blocks of :mod:`dopax.sampling.samplers` (whose docstring gives
the stream layout, the algorithms and their error bounds): uniforms
addressed by ``(key, stream, row, element)``, the tiled first-accepted
rejection loop, log factorials that cancel analytically, and the
Marsaglia-Tsang gamma, Poisson (inversion and PTRS) and binomial (inversion
and BTRS) samplers on those uniforms.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_batching import custom_vmap

from dopax.sampling.threefry import threefry2x32

_U32 = jnp.uint32
_TAG_CHILD = np.uint32(0xFFFFFFFB)

# Stream roles (the high byte of a stream number; the low bits number proposals).
_GAMMA = 1
_GAMMA_BOOST = 2
_NORMAL = 3
_POISSON_INVERSION = 4
_POISSON_PTRS = 5
_BINOMIAL_INVERSION = 6
_BINOMIAL_BTRS = 7
_GATE = 8
_CATEGORY = 9

_MAX_PROPOSALS = 1 << 16
_TILE = 1 << 14
_INVERSION_STEPS = 36
_SMALL_MEAN = 10.0


# --------------------------------------------------------------------------- uniforms


def _stream(w1: Any, w2: Any, role: int) -> tuple[Any, Any]:
    """The key words of stream ``role`` under a site's key words ``(w1, w2)``.

    Role ``r`` and proposal ``m`` use the Threefry key ``(w1, w2 + r * 2**24 + m)``;
    Threefry streams under distinct keys are independent whatever the keys
    (the key is meant to number streams), and role 0 with ``m = 0`` is the
    site's own key, which no sampler here uses.
    """
    return w1, jnp.asarray(w2, _U32) + np.uint32(role << 24)


def _open_unit32(bits: jax.Array) -> jax.Array:
    # (k + 1/2) / 2**23 for the top 23 bits k: exact in float32, strictly inside (0, 1).
    return ((bits >> np.uint32(9)).astype(jnp.float32) + 0.5) * np.float32(2.0**-23)


def _open_unit64(high: jax.Array, low: jax.Array) -> jax.Array:
    k = (high.astype(jnp.uint64) << np.uint64(20)) | (low.astype(jnp.uint64) >> np.uint64(12))
    return (k.astype(jnp.float64) + 0.5) * 2.0**-52


def _uniforms(
    k1: Any, k2: Any, m: Any, hi: Any, lo: Any, dtype: Any
) -> tuple[jax.Array, jax.Array]:
    """Two uniforms in (0, 1) per element: proposal ``m`` of stream ``(k1, k2)`` at ``(hi, lo)``.

    Proposal ``m`` hashes the counters under key ``(k1, k2 + m)``.
    """
    k2 = jnp.asarray(k2, _U32) + jnp.asarray(m).astype(_U32)
    y1, y2 = threefry2x32(k1, k2, hi, lo)
    if jnp.dtype(dtype) == jnp.float64:
        z1, z2 = threefry2x32(k1, k2, hi, jnp.asarray(lo, _U32) | np.uint32(0x80000000))
        return _open_unit64(y1, z1), _open_unit64(y2, z2)
    return _open_unit32(y1).astype(dtype), _open_unit32(y2).astype(dtype)


def _std_normal(u: jax.Array) -> jax.Array:
    return math.sqrt(2.0) * lax.erf_inv(2.0 * u - 1.0)


# --------------------------------------------------------------------------- rejection


def _first_accepted(
    propose: Callable[..., tuple[jax.Array, jax.Array]],
    inputs: Sequence[jax.Array],
    active: jax.Array | None = None,
    tile_size: int = _TILE,
) -> jax.Array:
    """Each element's first accepted proposal ``propose(m, *inputs)``, ``m = 0, 1, ...``.

    ``propose`` is elementwise: it returns the proposal and whether it was
    accepted. Elements are taken in tiles of ``tile_size``; a tile draws proposals
    until every element in it has accepted one. The value of an element does
    not depend on its tile: it is always its first accepted proposal.
    Elements outside ``active`` (if given) are left at zero and draw nothing.
    """
    shapes = [jnp.shape(x) for x in inputs]
    shape = jnp.broadcast_shapes(*shapes, *([] if active is None else [active.shape]))
    dtype = jax.eval_shape(propose, 0, *inputs)[0].dtype
    size = math.prod(shape)
    if size == 0:
        return jnp.zeros(shape, dtype)
    flat = [jnp.broadcast_to(x, shape).reshape(-1) for x in inputs]
    done = (
        jnp.zeros((size,), bool) if active is None else ~jnp.broadcast_to(active, shape).reshape(-1)
    )
    tile = min(tile_size, size)

    def first(local: Sequence[jax.Array], done: jax.Array) -> jax.Array:
        def more(state: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
            return (state[0] < _MAX_PROPOSALS) & ~jnp.all(state[2])

        def step(state: tuple[jax.Array, jax.Array, jax.Array]) -> Any:
            m, value, ok = state
            candidate, accepted = propose(m, *local)
            return m + 1, jnp.where(ok, value, candidate), ok | accepted

        start = (jnp.int32(0), jnp.zeros((tile,), dtype), done)
        return lax.while_loop(more, step, start)[1]

    if tile == size:
        return first(flat, done).reshape(shape)

    def one_tile(t: jax.Array, out: jax.Array) -> jax.Array:
        # the last tile ends at the last element (overlapping its neighbour,
        # whose values it draws again identically)
        begin = jnp.minimum(t * tile, size - tile)
        local = [lax.dynamic_slice(x, (begin,), (tile,)) for x in flat]
        value = first(local, lax.dynamic_slice(done, (begin,), (tile,)))
        return lax.dynamic_update_slice(out, value, (begin,))

    n_tiles = -(-size // tile)
    return lax.fori_loop(0, n_tiles, one_tile, jnp.zeros((size,), dtype)).reshape(shape)


def _whole_batch(fun: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """Make an elementwise sampler run once on the whole batch under ``jax.vmap``.

    Every argument has the rank of the output (size-1 axes broadcast), so a
    batched argument simply gains a leading axis and broadcasting does the
    rest; branches and loops inside ``fun`` then see the whole batch.

    Called on concrete arrays (e.g. by the planner's probe, outside ``jit``),
    the arguments are flattened and padded to a power of two of at least 64
    elements, so probes of a few rows share one compiled program.
    """
    wrapped = custom_vmap(jax.jit(fun))

    @wrapped.def_vmap
    def _rule(axis_size: int, in_batched: Sequence[bool], *args: jax.Array) -> Any:
        del axis_size, in_batched
        return wrapped(*args), True

    def call(*args: jax.Array) -> jax.Array:
        shape = jnp.broadcast_shapes(*(jnp.shape(a) for a in args))
        size = math.prod(shape)
        if size == 0 or any(isinstance(a, jax.core.Tracer) for a in args):
            return wrapped(*args)
        padded = max(64, 1 << (size - 1).bit_length())
        flat = [
            jnp.pad(jnp.broadcast_to(a, shape).reshape(-1), (0, padded - size), mode="edge")
            for a in args
        ]
        return wrapped(*flat)[:size].reshape(shape)

    return call


# --------------------------------------------------------------------------- log factorials


def _stirling_rest(x: jax.Array) -> jax.Array:
    """``lgamma(x + 1) - (x log x - x)`` for integer-valued ``x >= 0``.

    Exact values for 0, 1 and 2; from 3 the Stirling series to ``x**-7``, whose
    error there is below 5e-8.
    """
    big = jnp.maximum(x, 3.0)
    inv = 1.0 / big
    inv2 = inv * inv
    series = 0.5 * jnp.log(2.0 * math.pi * big) + inv * (
        1.0 / 12.0 - inv2 * (1.0 / 360.0 - inv2 * (1.0 / 1260.0 - inv2 / 1680.0))
    )
    small = jnp.where(x < 0.5, 0.0, jnp.where(x < 1.5, 1.0, 2.0 - math.log(2.0)))
    return jnp.where(x < 2.5, small, series)


def _x_log1p(x: jax.Array, y: jax.Array) -> jax.Array:
    """``x * log1p(y)``, zero where ``x`` is zero (also for ``y = -1``)."""
    return jnp.where(x == 0, 0.0, x * jnp.log1p(jnp.where(x == 0, 0.0, y)))


def _poisson_log_pmf(k: jax.Array, lam: jax.Array) -> jax.Array:
    # k log(lam) - lam - lgamma(k + 1) with the large terms cancelled analytically.
    return -_x_log1p(k, (k - lam) / lam) + (k - lam) - _stirling_rest(k)


# --------------------------------------------------------------------------- gamma


def _log_gamma_fun(
    w1: jax.Array, w2: jax.Array, hi: jax.Array, lo: jax.Array, alpha: jax.Array
) -> Any:
    dtype = alpha.dtype
    valid = (alpha > 0) & jnp.isfinite(alpha)
    boost = alpha < 1
    d = jnp.where(valid, jnp.where(boost, alpha + 1.0, alpha), 1.0) - 1.0 / 3.0

    def propose(m: Any, k1: Any, k2: Any, hi: Any, lo: Any, d: Any) -> Any:
        u1, u2 = _uniforms(k1, k2, m, hi, lo, dtype)
        x = _std_normal(u1)
        v = 1.0 + lax.rsqrt(9.0 * d) * x
        positive = v > 0
        log_v3 = 3.0 * jnp.log(jnp.where(positive, v, 1.0))
        accept = jnp.log(u2) < 0.5 * x * x + d * (1.0 - v * v * v + log_v3)
        return jnp.log(d) + log_v3, positive & accept

    log_g = _first_accepted(propose, (*_stream(w1, w2, _GAMMA), hi, lo, d))

    def boosted() -> jax.Array:
        u, _ = _uniforms(*_stream(w1, w2, _GAMMA_BOOST), 0, hi, lo, dtype)
        return log_g + jnp.where(boost, jnp.log(u) / jnp.where(valid, alpha, 1.0), 0.0)

    log_g = lax.cond(jnp.any(boost & valid), boosted, lambda: log_g)
    return jnp.where(valid, log_g, jnp.nan)


_log_gamma_leaf = _whole_batch(_log_gamma_fun)


# --------------------------------------------------------------------------- poisson


def _inversion(u: jax.Array, p0: jax.Array, ratio: Callable[[int], jax.Array]) -> jax.Array:
    """Smallest ``k`` with ``u <= F(k)``: ``F`` sums ``p0`` and ``p_k = p_{k-1} ratio(k)``."""
    p = p0
    cdf = p0
    k = jnp.zeros(jnp.broadcast_shapes(u.shape, p0.shape), u.dtype)
    for m in range(1, _INVERSION_STEPS + 1):
        k = k + (u > cdf).astype(u.dtype)
        p = p * ratio(m)
        cdf = cdf + p
    return k


def _poisson_fun(w1: jax.Array, w2: jax.Array, hi: jax.Array, lo: jax.Array, lam: jax.Array) -> Any:
    dtype = lam.dtype
    shape = jnp.broadcast_shapes(w1.shape, hi.shape, lo.shape, lam.shape)
    valid = (lam >= 0) & jnp.isfinite(lam)
    lam = jnp.where(valid, lam, 0.0)
    small = lam < _SMALL_MEAN
    zeros = jnp.zeros(shape, dtype)

    def by_inversion() -> jax.Array:
        u, _ = _uniforms(*_stream(w1, w2, _POISSON_INVERSION), 0, hi, lo, dtype)
        rate = jnp.where(small, lam, 0.0)
        k = _inversion(u, jnp.exp(-rate), lambda m: rate * (1.0 / m))
        return jnp.broadcast_to(k, shape)

    def by_rejection() -> jax.Array:
        def propose(m: Any, k1: Any, k2: Any, hi: Any, lo: Any, rate: Any) -> Any:
            b = 0.931 + 2.53 * jnp.sqrt(rate)
            a = -0.059 + 0.02483 * b
            v_r = 0.9277 - 3.6224 / (b - 2.0)
            u, v = _uniforms(k1, k2, m, hi, lo, dtype)
            u = u - 0.5
            us = 0.5 - jnp.abs(u)
            k = jnp.floor((2.0 * a / us + b) * u + rate + 0.43)
            fast = (us >= 0.07) & (v <= v_r)
            reject = (k < 0) | ((us < 0.013) & (v > us))
            # log(v / alpha / (a / us**2 + b)), 1 / alpha = 1.1239 + 1.1328 / (b - 3.4)
            log_hat = jnp.log(v * (1.1239 + 1.1328 / (b - 3.4)) / (a / (us * us) + b))
            accept = log_hat <= _poisson_log_pmf(jnp.maximum(k, 0.0), rate)
            return k, fast | (~reject & accept)

        rate = jnp.where(small, 2.0 * _SMALL_MEAN, lam)
        inputs = (*_stream(w1, w2, _POISSON_PTRS), hi, lo, rate)
        return _first_accepted(propose, inputs, active=~small)

    k_small = lax.cond(jnp.any(small), by_inversion, lambda: zeros)
    k_large = lax.cond(jnp.all(small), lambda: zeros, by_rejection)
    k = jnp.where(small, k_small, k_large)
    return jnp.where(valid, k, -1.0)


_poisson_leaf = _whole_batch(_poisson_fun)


# --------------------------------------------------------------------------- binomial


def _binomial_fun(
    w1: jax.Array, w2: jax.Array, hi: jax.Array, lo: jax.Array, n: jax.Array, p: jax.Array
) -> Any:
    dtype = p.dtype
    shape = jnp.broadcast_shapes(w1.shape, hi.shape, lo.shape, n.shape, p.shape)
    valid = (n >= 0) & jnp.isfinite(n) & (p >= 0) & (p <= 1)
    n = jnp.where(valid, jnp.floor(n), 0.0)
    p = jnp.where(valid, p, 0.0)
    flip = p > 0.5
    q = jnp.where(flip, 1.0 - p, p)
    small = n * q < _SMALL_MEAN
    zeros = jnp.zeros(shape, dtype)

    def by_inversion() -> jax.Array:
        u, _ = _uniforms(*_stream(w1, w2, _BINOMIAL_INVERSION), 0, hi, lo, dtype)
        qs = jnp.where(small, q, 0.0)
        odds = qs / (1.0 - qs)
        p0 = jnp.exp(n * jnp.log1p(-qs))
        k = _inversion(u, p0, lambda m: jnp.maximum(n - (m - 1), 0.0) * (odds * (1.0 / m)))
        return jnp.broadcast_to(jnp.minimum(k, n), shape)

    def by_rejection() -> jax.Array:
        def propose(m: Any, k1: Any, k2: Any, hi: Any, lo: Any, n: Any, q: Any) -> Any:
            spq = jnp.sqrt(n * q * (1.0 - q))
            b = 1.15 + 2.53 * spq
            a = -0.0873 + 0.0248 * b + 0.01 * q
            v_r = 0.92 - 4.2 / b
            mode = jnp.floor((n + 1.0) * q)
            u, v = _uniforms(k1, k2, m, hi, lo, dtype)
            u = u - 0.5
            us = 0.5 - jnp.abs(u)
            k = jnp.floor((2.0 * a / us + b) * u + n * q + 0.5)
            inside = (k >= 0) & (k <= n)
            fast = (us >= 0.07) & (v <= v_r) & inside
            kk = jnp.clip(k, 0.0, n)
            delta = kk - mode
            # log f(k) / f(mode), with the large terms of the log factorials cancelled
            log_ratio = (
                -_x_log1p(kk, delta / mode)
                - _x_log1p(n - kk, -delta / (n - mode))
                + delta * jnp.log((n - mode) * q / (mode * (1.0 - q)))
                + _stirling_rest(mode)
                + _stirling_rest(n - mode)
                - _stirling_rest(kk)
                - _stirling_rest(n - kk)
            )
            # log(v alpha / (a / us**2 + b)), alpha = (2.83 + 5.1 / b) spq
            log_hat = jnp.log(v * (2.83 + 5.1 / b) * spq / (a / (us * us) + b))
            return k, fast | (inside & (log_hat <= log_ratio))

        nl = jnp.where(small, 4.0 * _SMALL_MEAN, n)
        ql = jnp.where(small, 0.5, q)
        inputs = (*_stream(w1, w2, _BINOMIAL_BTRS), hi, lo, nl, ql)
        return _first_accepted(propose, inputs, active=~small)

    k_small = lax.cond(jnp.any(small), by_inversion, lambda: zeros)
    k_large = lax.cond(jnp.all(small), lambda: zeros, by_rejection)
    k = jnp.where(small, k_small, k_large)
    k = jnp.where(flip, n - k, k)
    return jnp.where(valid, k, -1.0)


_binomial_leaf = _whole_batch(_binomial_fun)
