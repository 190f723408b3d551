"""Pareto-smoothed importance sampling leave-one-out (PSIS-LOO), row by row, in JAX.

For one observation with log-likelihood draws ``ll_s`` (``s = 1..S``), the
leave-one-out importance ratios are ``r_s = 1 / p(y | theta_s)``. PSIS
(Vehtari, Gelman and Gabry 2017, "Practical Bayesian model evaluation using
leave-one-out cross-validation and WAIC") stabilises them: the
``M = ceil(min(0.2 S, 3 sqrt(S / r_eff)))`` largest ratios are replaced by
the expected order statistics of a generalized Pareto distribution fitted to
them above the threshold (the next largest ratio), then truncated at the
largest raw ratio. The fit is the profile-posterior mean of Zhang and
Stephens (2009, "A new and efficient estimation method for the generalized
Pareto distribution"), on a grid of ``30 + floor(sqrt(n))`` points, with the
shape estimate shrunk towards 0.5 by a weakly informative prior worth 10
observations, as the PSIS papers describe; the shape ``k`` is the diagnostic
(reliable below about 0.7).

Everything runs vectorised over rows with the draws on the last axis, inside
the compiled block program; only the ``M + 1`` largest ratios of a row are
ordered (:func:`jax.lax.top_k`). The Pareto fit is scale free, so it runs on
the tail's excess over the threshold relative to the threshold's weight,
which keeps float32 away from underflow however far the log-ratios spread.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from dopax.reductions.order import largest

__all__ = ["PRIOR_STRENGTH", "psis_loo", "tail_length"]

#: Observations' worth of the weakly informative prior that pulls ``k`` to 0.5.
PRIOR_STRENGTH = 10.0
#: Scale of the grid of the Zhang-Stephens fit (their ``3`` times the first quartile).
_GRID_SCALE = 3.0
#: Fewest grid points of the fit (plus ``floor(sqrt(n))``).
_GRID_MIN = 30
#: Lowest threshold of the log-ratios relative to their maximum (log of float64's tiny).
_LOG_TINY = math.log(2.2250738585072014e-308)
#: Tails of at most this many ratios are not smoothed (``k`` is then infinite).
_MIN_TAIL = 4


def tail_length(num_draws: int, reff: float = 1.0) -> int:
    """Return how many of the largest ratios PSIS smooths: ``ceil(min(0.2 S, 3 sqrt(S / r_eff)))``.

    Args:
        num_draws: Number of draws ``S``.
        reff: Relative effective sample size of the draws.
    """
    return math.ceil(min(0.2 * num_draws, 3.0 * math.sqrt(num_draws / reff)))


def _logsumexp(x: jax.Array, axis: int = -1) -> jax.Array:
    peak = jnp.max(x, axis=axis, keepdims=True)
    peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
    total = jnp.sum(jnp.exp(x - peak), axis=axis)
    return jnp.log(total) + jnp.squeeze(peak, axis)


def _pareto_fit(excess: jax.Array, valid: jax.Array, n: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Fit a generalized Pareto distribution to each row's excesses; return ``(k, sigma)``.

    Args:
        excess: Excesses over the threshold, descending, padded on the right;
            shape ``(..., M)``.
        valid: Which entries of ``excess`` are the tail's (a prefix).
        n: Tail length per row (``valid.sum(-1)``), float.
    """
    m_max = _GRID_MIN + math.isqrt(excess.shape[-1])
    largest = excess[..., 0]
    # first quartile of the ascending tail: its floor(n / 4 + 0.5)-th value (1-based)
    quartile_pos = n - jnp.floor(n / 4 + 0.5)
    quartile = jnp.take_along_axis(excess, quartile_pos.astype(jnp.int32)[..., None], axis=-1)[
        ..., 0
    ]
    m = _GRID_MIN + jnp.floor(jnp.sqrt(n))
    j = jnp.arange(1, m_max + 1, dtype=excess.dtype)
    on_grid = j <= m[..., None]
    theta = 1.0 / largest[..., None] + (1.0 - jnp.sqrt(m[..., None] / (j - 0.5))) / (
        _GRID_SCALE * quartile[..., None]
    )
    theta = jnp.where(on_grid, theta, 1.0 / largest[..., None] * 0.5)  # harmless filler

    def mean_log1p(t: jax.Array) -> jax.Array:  # t (..., G) -> mean over the tail of log1p(-t x)
        terms = jnp.log1p(-t[..., :, None] * excess[..., None, :])
        return jnp.sum(jnp.where(valid[..., None, :], terms, 0.0), axis=-1) / n[..., None]

    k_grid = mean_log1p(theta)
    profile = n[..., None] * (jnp.log(-theta / k_grid) - k_grid - 1.0)
    profile = jnp.where(on_grid, profile, -jnp.inf)
    weights = jax.nn.softmax(profile, axis=-1)
    theta_hat = jnp.sum(weights * theta, axis=-1)
    k_hat = mean_log1p(theta_hat[..., None])[..., 0]
    sigma = -k_hat / theta_hat  # the scale goes with the estimate before the prior
    return (n * k_hat + PRIOR_STRENGTH * 0.5) / (n + PRIOR_STRENGTH), sigma


def _pareto_quantile(p: jax.Array, k: jax.Array, sigma: jax.Array) -> jax.Array:
    """Quantile function of the generalized Pareto distribution (location 0)."""
    small = jnp.abs(k) < jnp.finfo(p.dtype).eps
    safe_k = jnp.where(small, 1.0, k)
    general = jnp.expm1(-safe_k * jnp.log1p(-p)) / safe_k
    return sigma * jnp.where(small, -jnp.log1p(-p), general)


def psis_loo(log_lik: jax.Array, reff: float = 1.0) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Return PSIS-LOO's pointwise ``elpd_loo``, Pareto ``k`` and ``lppd`` of every row.

    Args:
        log_lik: Pointwise log-likelihood, draws on the last axis ``(..., S)``.
        reff: Relative effective sample size of the draws (static).

    Returns:
        ``(loo_i, pareto_k, lppd_i)``, each shaped like ``log_lik`` without its
        last axis. ``pareto_k`` is infinite where the tail has too few
        distinct ratios to fit.
    """
    ll = log_lik.astype(jnp.float32)
    num = int(ll.shape[-1])
    size = min(tail_length(num, reff), num - 1)
    ratios = -ll
    peak = jnp.max(ratios, axis=-1)
    shifted = ratios - peak[..., None]  # log-ratios, largest 0
    top = largest(shifted, size + 1)  # descending
    cutoff = jnp.maximum(top[..., size], _LOG_TINY)
    tail = top[..., :size]
    valid = tail > cutoff[..., None]
    n = jnp.sum(valid, axis=-1).astype(jnp.float32)
    excess = jnp.where(valid, jnp.expm1(tail - cutoff[..., None]), 0.0)
    # a tail too short to fit still gets a (discarded) fit on a harmless stand-in
    fit_ok = n > _MIN_TAIL
    k, sigma = _pareto_fit(
        jnp.where(fit_ok[..., None], excess, 1.0),
        jnp.where(fit_ok[..., None], valid, True),
        jnp.where(fit_ok, n, float(size)),
    )
    smooth = fit_ok & jnp.isfinite(k) & jnp.isfinite(sigma)
    # expected order statistics: the d-th largest of n gets p = (n - d - 0.5) / n
    d = jnp.arange(size, dtype=jnp.float32)
    p = jnp.clip((n[..., None] - d - 0.5) / jnp.maximum(n[..., None], 1.0), 0.0, 1.0 - 1e-7)
    fitted = cutoff[..., None] + jnp.log1p(_pareto_quantile(p, k[..., None], sigma[..., None]))
    fitted = jnp.minimum(fitted, 0.0)  # truncated at the largest raw ratio
    weights = jnp.where(smooth[..., None] & valid, fitted, tail)
    # the rest of the draws keep their raw ratio, and ratio + log-lik = -peak for each
    rest_sum = jnp.sum(jnp.where(shifted <= cutoff[..., None], jnp.exp(shifted), 0.0), axis=-1)
    tail_sum = jnp.sum(jnp.where(valid, jnp.exp(weights), 0.0), axis=-1)
    normaliser = jnp.log(rest_sum + tail_sum)
    kept = jnp.sum(jnp.where(valid, jnp.exp(weights - tail), 0.0), axis=-1)
    loo_i = -peak + jnp.log((num - n) + kept) - normaliser
    pareto_k = jnp.where(fit_ok & jnp.isfinite(k), k, jnp.inf)
    lppd_i = _logsumexp(ll) - math.log(num)
    return loo_i, pareto_k, lppd_i
