"""Numeric summaries of posterior draws: highest-density intervals and streaming moments.

Pure numpy; nothing here touches xarray or matplotlib.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["RunningMoments", "hdi", "summarize_draws"]


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


def _summary_arrays(draws: np.ndarray, prob: float, axis: int = 0) -> dict[str, np.ndarray]:
    """Return mean, sd, HDI bounds and ``P(> 0)`` of ``draws`` along ``axis`` as arrays.

    Args:
        draws: Posterior draws; ``axis`` indexes the draws.
        prob: Probability mass of the highest-density interval.
        axis: The axis of ``draws`` that indexes the draws.
    """
    values = np.asarray(draws, dtype=np.float64)
    n = values.shape[axis]
    interval = hdi(values, prob=prob, axis=axis)
    return {
        "mean": values.mean(axis=axis),
        "sd": values.std(axis=axis, ddof=1 if n > 1 else 0),
        "hdi_low": interval[..., 0],
        "hdi_high": interval[..., 1],
        "p_positive": (values > 0).mean(axis=axis),
    }


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


class RunningMoments:
    """Streaming mean and variance over batches, merged exactly (Welford/Chan).

    Each :meth:`update` reduces one batch along an axis; the remaining shape is kept,
    so one instance tracks, for example, the posterior mean of every row across
    blocks of draws. Two instances fed disjoint data combine with :meth:`merge` into
    the moments of the union, as if all data had been seen by one instance.

    Args:
        ddof: Delta degrees of freedom of :attr:`variance` (1 gives the sample variance).
    """

    def __init__(self, ddof: int = 1) -> None:
        if ddof < 0:
            raise ValueError(f"ddof must be non-negative, got {ddof}.")
        self._ddof = int(ddof)
        self._count = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    @property
    def ddof(self) -> int:
        """Delta degrees of freedom used by :attr:`variance`."""
        return self._ddof

    @property
    def count(self) -> int:
        """Number of observations seen so far."""
        return self._count

    def _state(self) -> tuple[np.ndarray, np.ndarray]:
        if self._mean is None or self._m2 is None:
            raise ValueError("RunningMoments has seen no data yet.")
        return self._mean, self._m2

    @property
    def mean(self) -> np.ndarray:
        """Running mean (a copy).

        Raises:
            ValueError: If no data has been seen.
        """
        return self._state()[0].copy()

    @property
    def variance(self) -> np.ndarray:
        """Running variance with :attr:`ddof` delta degrees of freedom; NaN while too few data.

        Raises:
            ValueError: If no data has been seen.
        """
        m2 = self._state()[1]
        denom = self._count - self._ddof
        if denom <= 0:
            return np.full_like(m2, np.nan)
        return m2 / denom

    @property
    def sd(self) -> np.ndarray:
        """Running standard deviation, the square root of :attr:`variance`."""
        sd: np.ndarray = np.sqrt(self.variance)
        return sd

    def _combine(self, count: int, mean: np.ndarray, m2: np.ndarray) -> None:
        """Fold the moments ``(count, mean, m2)`` of disjoint data into this instance."""
        if count == 0:
            return
        if self._mean is None or self._m2 is None:
            self._count, self._mean, self._m2 = count, mean.copy(), m2.copy()
            return
        if mean.shape != self._mean.shape:
            raise ValueError(
                f"Shape mismatch: running moments have shape {self._mean.shape}, "
                f"new data has shape {mean.shape}."
            )
        total = self._count + count
        delta = mean - self._mean
        self._mean = self._mean + delta * (count / total)
        self._m2 = self._m2 + m2 + delta**2 * (self._count * count / total)
        self._count = total

    def update(self, batch: npt.ArrayLike, axis: int = 0) -> RunningMoments:
        """Add a batch of observations.

        Args:
            batch: Observations; ``axis`` indexes them, the other axes must match
                earlier batches. A batch with no observations changes nothing.
            axis: The axis of ``batch`` that indexes observations.

        Returns:
            This instance, updated in place.

        Raises:
            ValueError: If the batch's shape beyond ``axis`` does not match.
        """
        values = np.asarray(batch, dtype=np.float64)
        count = values.shape[axis]
        if count == 0:
            return self
        mean = values.mean(axis=axis)
        m2 = ((values - np.expand_dims(mean, axis)) ** 2).sum(axis=axis)
        self._combine(count, mean, m2)
        return self

    def merge(self, other: RunningMoments) -> RunningMoments:
        """Fold the moments of ``other`` (fed disjoint data) into this instance.

        Args:
            other: Another instance; it is left unchanged.

        Returns:
            This instance, updated in place.

        Raises:
            ValueError: If the two instances track different shapes.
        """
        if other._mean is None or other._m2 is None:
            return self
        self._combine(other._count, other._mean, other._m2)
        return self

    def __repr__(self) -> str:
        shape = None if self._mean is None else self._mean.shape
        return f"RunningMoments(count={self._count}, shape={shape}, ddof={self._ddof})"
