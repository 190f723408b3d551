"""Summaries of draws inside a compiled program: mean, sd, interval bounds, quantiles.

:func:`summarize_draws` is the one reduction behind ``summarize``'s per-row
summaries, ``compare_scenarios``' per-row effect intervals and the MLflow
pyfunc: it runs under ``jit`` on the draws of a block, draws on the leading
axis, and returns arrays shaped like one draw.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dopax.reductions.order import (
    Ordered,
    hdi_width,
    order_statistics,
    quantile_plan,
    tail_sizes,
    tails,
)

__all__ = ["INTERVALS", "quantile_name", "summarize_draws"]

#: Interval kinds: equal-tailed (NumPy's linear quantiles) or highest-density (ArviZ's).
INTERVALS = ("eti", "hdi")


def quantile_name(prob: float) -> str:
    """Return the suffix of an extra quantile's variable, e.g. ``q0.5``."""
    return f"q{prob:g}"


def _ranks(n: int, prob: float, interval: str, quantiles: tuple[float, ...]) -> list[int]:
    """Ranks the equal-tailed interval (if asked for) and the quantiles read."""
    ranks = []
    probs = (*quantiles, (1 - prob) / 2, (1 + prob) / 2) if interval == "eti" else quantiles
    for p in probs:
        plan = quantile_plan(n, p)
        ranks += [plan.below, plan.above]
    return ranks


def summarize_draws(
    values: jax.Array, prob: float, interval: str = "eti", quantiles: tuple[float, ...] = ()
) -> dict[str, jax.Array]:
    """Reduce draws (leading axis) to ``mean``, ``sd``, ``lower``, ``upper`` and ``q<p>``.

    Inside a compiled program: the mean and the standard deviation (``ddof=1``;
    0 for one draw) in float32, the equal-tailed interval and quantiles from
    the order statistics they need, the highest-density interval from the
    draws' ordered tails (:mod:`dopax.reductions.order`). Every result has the
    shape of one draw.

    Args:
        values: Draws on the leading axis (any real or boolean dtype).
        prob: Probability of the interval.
        interval: ``"eti"`` (NumPy's linear quantiles) or ``"hdi"`` (ArviZ's).
        quantiles: Extra quantiles.
    """
    x = values.astype(jnp.float32)
    n = int(x.shape[0])
    mean = jnp.sum(x, axis=0) / n
    if n > 1:
        sd = jnp.sqrt(jnp.sum(jnp.square(x - mean), axis=0) / (n - 1))
    else:
        sd = jnp.zeros_like(mean)
    ranks = _ranks(n, prob, interval, quantiles)
    ordered: Ordered
    if interval == "eti":
        ordered = order_statistics(x, ranks)
        lower = ordered.quantile(quantile_plan(n, (1 - prob) / 2))
        upper = ordered.quantile(quantile_plan(n, (1 + prob) / 2))
    else:  # the highest-density interval reads whole tails
        count = n - hdi_width(n, prob)
        k_low, k_high = tail_sizes(n, ranks)
        whole = tails(jnp.moveaxis(x, 0, -1), max(k_low, count), max(k_high, count))
        lower, upper = whole.hdi(prob)
        ordered = whole
    out = {"mean": mean, "sd": sd, "lower": lower, "upper": upper}
    for p in quantiles:
        out[quantile_name(p)] = ordered.quantile(quantile_plan(n, p))
    return out
