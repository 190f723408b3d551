"""Numeric summaries of posterior draws: highest-density intervals and streaming moments.

Pure numpy; nothing here touches xarray or matplotlib.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["INTERVALS", "eti", "hdi", "summarize_draws"]

#: Interval kinds of the summaries: highest-density, equal-tailed, or both.
INTERVALS = ("hdi", "eti", "both")


def _check_prob(prob: float) -> float:
    """Return ``prob`` as a float after checking that it lies strictly between 0 and 1."""
    value = float(prob)
    if not 0.0 < value < 1.0:
        raise ValueError(f"prob must lie strictly between 0 and 1, got {prob!r}.")
    return value


def hdi(draws: npt.ArrayLike, prob: float = 0.94, axis: int = 0) -> np.ndarray:
    """Return the highest-density (shortest) interval of ``draws`` along ``axis``.

    The draws are sorted and every window of ``floor(prob * n) + 1`` consecutive
    draws is a candidate interval; the narrowest one is returned (the first one
    on ties). Every other axis is treated independently.

    Args:
        draws: Posterior draws; ``axis`` indexes the draws.
        prob: Probability mass the interval holds, strictly between 0 and 1.
        axis: The axis of ``draws`` that indexes the draws.

    Returns:
        An array shaped like ``draws`` without ``axis`` and with a new last axis of
        length 2 holding the lower and upper bounds.

    Raises:
        ValueError: If ``prob`` is not strictly between 0 and 1, or there are no draws.
    """
    prob = _check_prob(prob)
    values = np.asarray(draws)
    if values.ndim == 0:
        raise ValueError("draws must have at least one dimension.")
    values = np.moveaxis(values, axis, -1)
    n = values.shape[-1]
    if n == 0:
        raise ValueError("draws is empty along the draw axis.")
    ordered = np.sort(values, axis=-1)
    width_idx = math.floor(prob * n)
    n_windows = n - width_idx
    widths = ordered[..., width_idx:] - ordered[..., :n_windows]
    start = np.argmin(widths, axis=-1)[..., np.newaxis]
    lower = np.take_along_axis(ordered, start, axis=-1)
    upper = np.take_along_axis(ordered, start + width_idx, axis=-1)
    return np.concatenate([lower, upper], axis=-1)


def eti(draws: npt.ArrayLike, prob: float = 0.94, axis: int = 0) -> np.ndarray:
    """Return the equal-tailed interval of ``draws`` along ``axis``, shaped as :func:`hdi`'s.

    The bounds are the ``(1 - prob) / 2`` and ``(1 + prob) / 2`` quantiles
    (NumPy's default, linear interpolation), so each tail holds the same mass.
    The arguments are those of :func:`hdi`.
    """
    prob = _check_prob(prob)
    values = np.asarray(draws)
    if values.ndim == 0 or values.shape[axis] == 0:
        raise ValueError("draws must have at least one draw along the draw axis.")
    q = np.quantile(values, [(1 - prob) / 2, (1 + prob) / 2], axis=axis)
    return np.moveaxis(q, 0, -1)


def check_rope(rope: tuple[float, float] | None) -> tuple[float, float] | None:
    """Return ``rope`` as ``(low, high)`` floats after checking it, or ``None``."""
    if rope is None:
        return None
    try:
        low, high = (float(v) for v in rope)
    except (TypeError, ValueError):
        raise ValueError(f"`rope` must be a pair (low, high); got {rope!r}.") from None
    if not low <= high:
        raise ValueError(f"`rope` must have low <= high; got {rope!r}.")
    return low, high


def _summary_arrays(
    draws: np.ndarray,
    prob: float,
    axis: int = 0,
    *,
    interval: str = "hdi",
    rope: tuple[float, float] | None = None,
) -> dict[str, np.ndarray]:
    """Return mean, sd, interval bounds, ``P(> 0)`` and ``P(in rope)`` along ``axis``.

    Args:
        draws: Posterior draws; ``axis`` indexes the draws.
        prob: Probability mass of the intervals.
        axis: The axis of ``draws`` that indexes the draws.
        interval: ``"hdi"`` (``hdi_low``, ``hdi_high``), ``"eti"`` (``eti_low``,
            ``eti_high``) or ``"both"``.
        rope: A region of practical equivalence ``(low, high)``: adds ``p_rope``,
            the probability that the quantity lies inside it.
    """
    if interval not in INTERVALS:
        raise ValueError(f"`interval` must be one of {INTERVALS}; got {interval!r}.")
    values = np.asarray(draws, dtype=np.float64)
    n = values.shape[axis]
    out = {
        "mean": values.mean(axis=axis),
        "sd": values.std(axis=axis, ddof=1 if n > 1 else 0),
    }
    for kind, fn in (("hdi", hdi), ("eti", eti)):
        if interval in (kind, "both"):
            bounds = fn(values, prob=prob, axis=axis)
            out[f"{kind}_low"], out[f"{kind}_high"] = bounds[..., 0], bounds[..., 1]
    out["p_positive"] = (values > 0).mean(axis=axis)
    rope = check_rope(rope)
    if rope is not None:
        out["p_rope"] = ((values >= rope[0]) & (values <= rope[1])).mean(axis=axis)
    # NaN draws say nothing: no summary of them is a number (a NaN is not > 0,
    # so P(> 0) would otherwise read as a probability, and the intervals could
    # end at finite draws)
    missing = np.isnan(values).any(axis=axis)
    if np.any(missing):
        out = {k: np.where(missing, np.nan, v) for k, v in out.items()}
    return out


def summarize_draws(draws: npt.ArrayLike, prob: float = 0.94) -> dict[str, float]:
    """Summarise a vector of posterior draws of one scalar quantity.

    Args:
        draws: One-dimensional array of draws.
        prob: Probability mass of the highest-density interval, strictly between 0 and 1.

    Returns:
        A dict with ``mean``, ``sd`` (sample standard deviation, ``ddof=1``; 0 for a
        single draw), ``hdi_low`` and ``hdi_high`` (bounds of the highest-density
        interval) and ``p_positive`` (the fraction of draws greater than 0).

    Raises:
        ValueError: If ``draws`` is not one-dimensional or empty, or ``prob`` is not
            strictly between 0 and 1.
    """
    prob = _check_prob(prob)
    values = np.asarray(draws, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"draws must be one-dimensional, got shape {values.shape}.")
    if values.size == 0:
        raise ValueError("draws is empty.")
    return {key: float(value) for key, value in _summary_arrays(values, prob).items()}
