"""Matplotlib plots of effect posteriors.

Matplotlib is imported inside the functions, so importing this module is cheap.
No function here calls ``plt.show``; the caller decides how to display or save.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from dopax.effects.stats import hdi

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_ate_density", "plot_effects", "plot_group_intervals"]


def plot_ate_density(
    ax: Axes,
    ate: Mapping[str, np.ndarray],
    *,
    prob: float,
    xlabel: str = "Average treatment effect",
) -> None:
    """Draw a histogram density of each contrast's ATE draws with its HDI and a zero line.

    Args:
        ax: The axes to draw on.
        ate: One-dimensional ATE draws keyed by contrast name.
        prob: Probability mass of the shaded highest-density interval.
        xlabel: Label of the x axis.
    """
    colors = [f"C{i % 10}" for i in range(len(ate))]
    for (name, draws), color in zip(ate.items(), colors, strict=True):
        values = np.asarray(draws, dtype=np.float64).ravel()
        low, high = hdi(values, prob=prob)
        bins = int(np.clip(np.sqrt(values.size), 10, 60))
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
    ax.set_title(f"ATE posterior (mean, {prob:.0%} HDI)")
    if ate:
        ax.legend(fontsize="small", frameon=False)


def plot_group_intervals(
    ax: Axes,
    group_ate: Mapping[str, np.ndarray],
    group_labels: Sequence[str],
    *,
    prob: float,
    xlabel: str = "Average treatment effect",
) -> None:
    """Draw each group's posterior mean ATE with its HDI as a horizontal bar.

    Args:
        ax: The axes to draw on.
        group_ate: ATE draws keyed by contrast name, each shaped ``(draws, groups)``.
        group_labels: Label of each group, in column order.
        prob: Probability mass of the intervals.
        xlabel: Label of the x axis.
    """
    n_groups = len(group_labels)
    n_contrasts = max(len(group_ate), 1)
    positions = np.arange(n_groups, dtype=np.float64)
    step = 0.6 / n_contrasts
    for i, (name, draws) in enumerate(group_ate.items()):
        values = np.asarray(draws, dtype=np.float64).reshape(-1, n_groups)
        centre = values.mean(axis=0)
        interval = hdi(values, prob=prob, axis=0)
        offsets = positions + (i - (n_contrasts - 1) / 2) * step
        ax.errorbar(
            centre,
            offsets,
            xerr=np.stack([centre - interval[:, 0], interval[:, 1] - centre]),
            fmt="o",
            color=f"C{i % 10}",
            capsize=3,
            label=name,
        )
    ax.axvline(0.0, color="black", linestyle="--", linewidth=1)
    ax.set_yticks(positions)
    ax.set_yticklabels(list(group_labels))
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(f"ATE by group (mean, {prob:.0%} HDI)")
    if len(group_ate) > 1:
        ax.legend(fontsize="small", frameon=False)


def plot_effects(
    ate: Mapping[str, np.ndarray],
    *,
    prob: float,
    group_labels: Sequence[str] | None = None,
    group_ate: Mapping[str, np.ndarray] | None = None,
    ax: Axes | Sequence[Axes] | np.ndarray | None = None,
    xlabel: str = "Average treatment effect",
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
    plot_ate_density(axes[0], ate, prob=prob, xlabel=xlabel)
    if group_ate is not None and group_labels is not None and len(axes) > 1:
        plot_group_intervals(axes[1], group_ate, group_labels, prob=prob, xlabel=xlabel)
    return _root_figure(axes[0])


def _root_figure(ax: Axes) -> Figure:
    """Return the top-level figure that ``ax`` belongs to (through any subfigures)."""
    from matplotlib.figure import Figure

    parent = ax.figure
    while not isinstance(parent, Figure):
        parent = parent.figure
    return parent
