"""Matplotlib plots of effect posteriors.

Matplotlib is imported inside the functions, so importing this module is cheap.
No function here calls ``plt.show``; the caller decides how to display or save.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dopax.effects.stats import eti, hdi

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["histogram_bins", "plot_ate_density", "plot_effects", "plot_group_intervals"]

#: Fewest and most histogram bins of an effect density.
_MIN_BINS, _MAX_BINS = 5, 60


def histogram_bins(draws: Sequence[np.ndarray]) -> np.ndarray:
    """Return bin edges shared by several sets of draws, their number set by the draw count.

    The Freedman-Diaconis width (twice the interquartile range over the cube
    root of the number of draws) of the pooled draws, bounded to 5..60 bins:
    a few hundred draws get a coarse histogram, tens of thousands a fine one,
    and every contrast is binned alike so their densities compare.

    Args:
        draws: One-dimensional draws of each quantity.
    """
    pooled = np.concatenate([np.asarray(d, dtype=np.float64).ravel() for d in draws])
    pooled = pooled[np.isfinite(pooled)]
    if pooled.size == 0:
        return np.linspace(-1.0, 1.0, _MIN_BINS + 1)
    low, high = float(pooled.min()), float(pooled.max())
    if high <= low:
        return np.linspace(low - 0.5, high + 0.5, _MIN_BINS + 1)
    per_set = max(min(np.asarray(d).size for d in draws), 1)
    q75, q25 = np.percentile(pooled, [75, 25])
    width = 2.0 * (q75 - q25) / per_set ** (1 / 3)
    n_bins = int(np.ceil((high - low) / width)) if width > 0 else _MAX_BINS
    n_bins = int(np.clip(n_bins, _MIN_BINS, _MAX_BINS))
    return np.linspace(low, high, n_bins + 1)


def _interval(values: np.ndarray, prob: float, interval: str, axis: int = 0) -> np.ndarray:
    return (eti if interval == "eti" else hdi)(values, prob=prob, axis=axis)


def _legend_outside(ax: Axes) -> None:
    """Place the legend to the right of the data, never over it."""
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
        fontsize="small",
        frameon=False,
    )


def plot_ate_density(
    ax: Axes,
    ate: Mapping[str, np.ndarray],
    *,
    prob: float,
    xlabel: str = "Average treatment effect",
    interval: str = "hdi",
) -> None:
    """Draw a histogram density of each contrast's ATE draws with its interval and a zero line.

    Args:
        ax: The axes to draw on.
        ate: One-dimensional ATE draws keyed by contrast name.
        prob: Probability mass of the shaded interval.
        xlabel: Label of the x axis.
        interval: ``"hdi"`` (highest-density) or ``"eti"`` (equal-tailed).
    """
    colors = [f"C{i % 10}" for i in range(len(ate))]
    bins: Any = histogram_bins(list(ate.values())) if ate else 10
    for (name, draws), color in zip(ate.items(), colors, strict=True):
        values = np.asarray(draws, dtype=np.float64).ravel()
        low, high = _interval(values, prob, interval)
        ax.hist(
            values,
            bins=bins,
            density=True,
            histtype="stepfilled",
            alpha=0.35,
            color=color,
            label=f"{name}: {values.mean():.3g} [{low:.3g}, {high:.3g}]",
        )
        ax.axvspan(low, high, color=color, alpha=0.12, linewidth=0)
        ax.axvline(low, color=color, linestyle=":", linewidth=1)
        ax.axvline(high, color=color, linestyle=":", linewidth=1)
        ax.axvline(values.mean(), color=color, linewidth=1.5)
    ax.axvline(0.0, color="black", linestyle="--", linewidth=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Posterior density")
    ax.set_title(f"ATE posterior (mean, {prob:.0%} {interval.upper()})")
    if ate:
        _legend_outside(ax)


def plot_group_intervals(
    ax: Axes,
    group_ate: Mapping[str, np.ndarray],
    group_labels: Sequence[str],
    *,
    prob: float,
    xlabel: str = "Average treatment effect",
    group_counts: Sequence[int] | None = None,
    interval: str = "hdi",
) -> None:
    """Draw each group's posterior mean ATE with its interval as a horizontal bar.

    Args:
        ax: The axes to draw on.
        group_ate: ATE draws keyed by contrast name, each shaped ``(draws, groups)``.
        group_labels: Label of each group, in column order.
        prob: Probability mass of the intervals.
        xlabel: Label of the x axis.
        group_counts: Rows in each group, shown beside its label.
        interval: ``"hdi"`` (highest-density) or ``"eti"`` (equal-tailed).
    """
    n_groups = len(group_labels)
    n_contrasts = max(len(group_ate), 1)
    positions = np.arange(n_groups, dtype=np.float64)
    step = 0.6 / n_contrasts
    for i, (name, draws) in enumerate(group_ate.items()):
        values = np.asarray(draws, dtype=np.float64).reshape(-1, n_groups)
        centre = values.mean(axis=0)
        bounds = _interval(values, prob, interval)
        offsets = positions + (i - (n_contrasts - 1) / 2) * step
        ax.errorbar(
            centre,
            offsets,
            xerr=np.stack([centre - bounds[:, 0], bounds[:, 1] - centre]),
            fmt="o",
            color=f"C{i % 10}",
            capsize=3,
            label=name,
        )
    ax.axvline(0.0, color="black", linestyle="--", linewidth=1)
    ax.set_yticks(positions)
    labels = [str(g) for g in group_labels]
    if group_counts is not None:
        labels = [f"{g} (n={n:,})" for g, n in zip(labels, group_counts, strict=True)]
    ax.set_yticklabels(labels)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(f"ATE by group (mean, {prob:.0%} {interval.upper()})")
    if len(group_ate) > 1:
        _legend_outside(ax)


def plot_effects(
    ate: Mapping[str, np.ndarray],
    *,
    prob: float,
    group_labels: Sequence[str] | None = None,
    group_ate: Mapping[str, np.ndarray] | None = None,
    ax: Axes | Sequence[Axes] | np.ndarray | None = None,
    xlabel: str = "Average treatment effect",
    group_counts: Sequence[int] | None = None,
    interval: str = "hdi",
) -> Figure:
    """Plot ATE posteriors and, when given, per-group intervals; return the figure.

    Args:
        ate: One-dimensional ATE draws keyed by contrast name.
        prob: Probability mass of the intervals.
        group_labels: Group labels; the per-group panel is drawn only with ``group_ate``.
        group_ate: Per-group ATE draws keyed by contrast name, each ``(draws, groups)``.
        ax: ``None`` creates a figure with one panel per plot; a single Axes gets the
            ATE panel only; a sequence (or array) of two Axes gets both panels.
        xlabel: Label of the effect axis.
        group_counts: Rows in each group, shown beside its label.
        interval: ``"hdi"`` (highest-density) or ``"eti"`` (equal-tailed).

    Raises:
        ValueError: If ``ax`` is neither an Axes nor a sequence of one or two Axes.
    """
    with_groups = group_ate is not None and group_labels is not None
    if ax is None:
        import matplotlib.pyplot as plt

        ncols = 2 if with_groups else 1
        _, axes_array = plt.subplots(
            1, ncols, figsize=(6.0 * ncols, 4.0), squeeze=False, layout="constrained"
        )
        axes: list[Axes] = list(axes_array[0])
    else:
        from matplotlib.axes import Axes as _Axes

        axes = [ax] if isinstance(ax, _Axes) else list(np.ravel(np.asarray(ax, dtype=object)))
        if len(axes) not in (1, 2) or not all(isinstance(a, _Axes) for a in axes):
            raise ValueError(f"ax must be an Axes or hold one or two Axes, got {ax!r}.")
    plot_ate_density(axes[0], ate, prob=prob, xlabel=xlabel, interval=interval)
    if group_ate is not None and group_labels is not None and len(axes) > 1:
        plot_group_intervals(
            axes[1],
            group_ate,
            group_labels,
            prob=prob,
            xlabel=xlabel,
            group_counts=group_counts,
            interval=interval,
        )
        # one effect axis: the same range on both panels
        lows, highs = zip(*(a.get_xlim() for a in axes[:2]), strict=True)
        for a in axes[:2]:
            a.set_xlim(min(lows), max(highs))
    return _root_figure(axes[0])


def _root_figure(ax: Axes) -> Figure:
    """Return the top-level figure that ``ax`` belongs to (through any subfigures)."""
    from matplotlib.figure import Figure

    parent = ax.figure
    while not isinstance(parent, Figure):
        parent = parent.figure
    return parent
