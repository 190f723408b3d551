"""The effect result: posterior draws of scenario means and contrasts, with summaries and plots.

An effect result is an :class:`xarray.DataTree` laid out as follows.

Root attributes: ``baseline`` (the baseline scenario's name), ``site`` (the
outcome site) and, optionally, ``hdi_prob`` (the default interval probability)
and ``n_rows`` (the rows compared).

Groups:

* ``draws`` (required): ``mean`` with dims ``(chain, draw, scenario)``, the mean
  outcome over rows under each scenario per posterior draw; ``ate`` with dims
  ``(chain, draw, contrast)``, the mean of ``scenario - baseline`` per draw; and
  ``relative`` with dims ``(chain, draw, contrast)``, ``ate`` over the baseline
  mean. Coordinates ``scenario`` and ``contrast`` hold names, and
  ``contrast_scenario`` (along ``contrast``) the scenario each contrast compares
  with the baseline.
* ``by_group`` (optional): ``ate`` with dims ``(chain, draw, contrast, group)``
  and ``mean`` with dims ``(chain, draw, scenario, group)``; optionally
  ``count`` with dims ``(group,)``, the rows in each group. Groups are in the
  order of ``by``: a categorical's categories, numbers ascending, text in
  natural order ("decile 2" before "decile 10").
* ``rows`` (optional): ``effect_mean``, ``effect_lower`` and ``effect_upper`` with
  dims ``(contrast, row)``; attribute ``interval_prob``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import xarray as xr

from dopax.effects.stats import _check_prob, _summary_arrays, check_rope
from dopax.output import schema

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["EffectResult"]

DRAWS = schema.EFFECT_DRAWS
BY_GROUP = schema.EFFECT_BY_GROUP
ROWS = schema.EFFECT_ROWS
CHAIN = schema.CHAIN
DRAW = schema.DRAW
SCENARIO = schema.SCENARIO
CONTRAST = schema.CONTRAST
GROUP = schema.GROUP

DEFAULT_HDI_PROB = 0.94
SUMMARY_COLUMNS: tuple[str, ...] = ("mean", "sd", "hdi_low", "hdi_high", "p_positive")


def _require_dims(ds: xr.Dataset, group: str, name: str, dims: tuple[str, ...]) -> None:
    """Raise ``ValueError`` unless ``ds[name]`` exists and has exactly the dimensions ``dims``."""
    if name not in ds.data_vars:
        raise ValueError(f"Effect result group {group!r} lacks the variable {name!r}.")
    have = ds[name].dims
    if set(have) != set(dims) or len(have) != len(dims):
        raise ValueError(
            f"Variable {group}/{name} must have dims {dims}, got {tuple(str(d) for d in have)}."
        )


def _pooled(da: xr.DataArray, *dims: str) -> np.ndarray:
    """Return the values of ``da`` with chains and draws pooled on the first axis.

    Args:
        da: A variable with dims ``chain``, ``draw`` and ``dims``.
        *dims: The remaining dims, in the order wanted after the pooled axis.
    """
    values = np.asarray(da.transpose(CHAIN, DRAW, *dims).values, dtype=np.float64)
    return values.reshape(-1, *values.shape[2:])


class EffectResult:
    """Posterior effects of interventions, wrapping an effect-result :class:`xarray.DataTree`.

    The layout of the tree is described in :mod:`dopax.effects`. The wrapper
    checks that layout on construction, reads names from it and adds summaries and
    plots; the tree itself is kept as given.

    Args:
        tree: The effect result.

    Raises:
        TypeError: If ``tree`` is not an :class:`xarray.DataTree`.
        ValueError: If the tree does not follow the effect-result layout.
    """

    def __init__(self, tree: xr.DataTree) -> None:
        if not isinstance(tree, xr.DataTree):
            raise TypeError(f"tree must be an xarray.DataTree, got {type(tree).__name__}.")
        if DRAWS not in tree.children:
            raise ValueError(f"Effect result has no {DRAWS!r} group.")
        draws = tree.children[DRAWS].to_dataset()
        _require_dims(draws, DRAWS, "mean", (CHAIN, DRAW, SCENARIO))
        _require_dims(draws, DRAWS, "ate", (CHAIN, DRAW, CONTRAST))
        if "relative" in draws.data_vars:
            _require_dims(draws, DRAWS, "relative", (CHAIN, DRAW, CONTRAST))
        baseline = tree.attrs.get("baseline")
        if baseline is None:
            raise ValueError("Effect result lacks the root attribute 'baseline'.")
        scenarios = tuple(str(s) for s in draws[SCENARIO].values)
        if str(baseline) not in scenarios:
            raise ValueError(
                f"Baseline {baseline!r} is not one of the scenarios {list(scenarios)}."
            )
        if BY_GROUP in tree.children:
            by_group = tree.children[BY_GROUP].to_dataset()
            _require_dims(by_group, BY_GROUP, "ate", (CHAIN, DRAW, CONTRAST, GROUP))
            if by_group.sizes[CONTRAST] != draws.sizes[CONTRAST]:
                raise ValueError(
                    f"Group {BY_GROUP!r} has {by_group.sizes[CONTRAST]} contrasts, "
                    f"{DRAWS!r} has {draws.sizes[CONTRAST]}."
                )
        if "hdi_prob" in tree.attrs:
            _check_prob(tree.attrs["hdi_prob"])
        self._tree = tree

    def _dataset(self, group: str) -> xr.Dataset:
        """Return the group ``group`` of the tree as a Dataset (inherited coordinates included)."""
        return self._tree.children[group].to_dataset()

    @property
    def tree(self) -> xr.DataTree:
        """The wrapped effect-result tree."""
        return self._tree

    @property
    def baseline(self) -> str:
        """Name of the baseline scenario every contrast is taken against."""
        return str(self._tree.attrs["baseline"])

    @property
    def site(self) -> str | None:
        """Name of the outcome site, or ``None`` when the tree does not record it."""
        site = self._tree.attrs.get("site")
        return None if site is None else str(site)

    @property
    def scenarios(self) -> tuple[str, ...]:
        """Names of all scenarios, the baseline included."""
        return tuple(str(s) for s in self._dataset(DRAWS)[SCENARIO].values)

    @property
    def contrasts(self) -> tuple[str, ...]:
        """Names of the contrasts (one per non-baseline scenario)."""
        return tuple(str(c) for c in self._dataset(DRAWS)[CONTRAST].values)

    @property
    def groups(self) -> tuple[str, ...] | None:
        """Labels of the groups of ``by_group`` as strings, or ``None`` without that group."""
        if BY_GROUP not in self._tree.children:
            return None
        return tuple(str(g) for g in self._dataset(BY_GROUP)[GROUP].values)

    @property
    def group_counts(self) -> dict[str, int] | None:
        """Rows in each group of ``by_group`` (by label), or ``None`` when not recorded."""
        if BY_GROUP not in self._tree.children:
            return None
        ds = self._dataset(BY_GROUP)
        if "count" not in ds.data_vars:
            return None
        return {str(g): int(c) for g, c in zip(ds[GROUP].values, ds["count"].values, strict=True)}

    @property
    def hdi_prob(self) -> float:
        """The default interval probability (the root attribute ``hdi_prob``, else 0.94)."""
        return float(self._tree.attrs.get("hdi_prob", DEFAULT_HDI_PROB))

    def _group_ate(self) -> np.ndarray:
        """Return ``by_group/ate`` pooled over chains, shaped ``(draws, contrast, group)``.

        Contrasts follow :attr:`contrasts`, matched by name when ``by_group`` labels them.
        """
        ate = self._dataset(BY_GROUP)["ate"]
        if CONTRAST in ate.coords:
            ate = ate.sel({CONTRAST: list(self.contrasts)})
        return _pooled(ate, CONTRAST, GROUP)

    def _resolve_prob(self, prob: float | None) -> float:
        return self.hdi_prob if prob is None else _check_prob(prob)

    def ate_draws(self) -> dict[str, np.ndarray]:
        """Return each contrast's ATE draws, chains pooled, keyed by contrast name."""
        pooled = _pooled(self._dataset(DRAWS)["ate"], CONTRAST)
        return {name: pooled[:, i] for i, name in enumerate(self.contrasts)}

    def summary(
        self,
        prob: float | None = None,
        *,
        interval: str = "hdi",
        rope: tuple[float, float] | None = None,
    ) -> pd.DataFrame:
        """Summarise the posterior draws, chains pooled.

        Args:
            prob: Probability mass of the intervals, strictly between 0 and 1;
                ``None`` uses :attr:`hdi_prob`.
            interval: ``"hdi"`` (highest-density interval: ``hdi_low``,
                ``hdi_high``), ``"eti"`` (equal-tailed interval: ``eti_low``,
                ``eti_high``), or ``"both"``.
            rope: A region of practical equivalence ``(low, high)`` in the
                outcome's units: adds ``p_rope``, the posterior probability that
                the quantity lies inside it (an effect too small to matter).

        Returns:
            A DataFrame indexed by ``(kind, name)`` with columns ``mean``, ``sd``,
            the interval bounds, ``p_positive``, ``p_rope`` (with ``rope``) and
            ``n`` (rows behind each row, when the result records it). Kinds are
            ``mean`` (one row per scenario), ``ate`` and ``relative`` (one row per
            contrast) and, when the tree has a ``by_group`` group,
            ``ate_by_group`` with rows named ``"<contrast> | <group>"``.
            ``df.attrs`` holds ``hdi_prob``, ``baseline`` and ``site``.

        Raises:
            ValueError: If ``prob`` is not strictly between 0 and 1, ``interval``
                is unknown or ``rope`` is not a pair ``low <= high``.
        """
        prob = self._resolve_prob(prob)
        rope = check_rope(rope)
        draws = self._dataset(DRAWS)
        n_rows = self._tree.attrs.get("n_rows")
        total = np.nan if n_rows is None else float(n_rows)
        blocks: list[tuple[str, list[str], np.ndarray, np.ndarray]] = [
            ("mean", list(self.scenarios), _pooled(draws["mean"], SCENARIO), np.array([])),
            ("ate", list(self.contrasts), _pooled(draws["ate"], CONTRAST), np.array([])),
        ]
        if "relative" in draws.data_vars:
            relative = _pooled(draws["relative"], CONTRAST)
            blocks.append(("relative", list(self.contrasts), relative, np.array([])))
        groups = self.groups
        if groups is not None:
            by_group = self._group_ate()
            names = [f"{c} | {g}" for c in self.contrasts for g in groups]
            counts = self.group_counts or {}
            per_group = np.asarray([counts.get(g, np.nan) for g in groups], dtype=np.float64)
            n = np.tile(per_group, len(self.contrasts))
            blocks.append(("ate_by_group", names, by_group.reshape(by_group.shape[0], -1), n))

        index: list[tuple[str, str]] = []
        columns: dict[str, list[np.ndarray]] = {}
        for kind, names, values, n in blocks:
            index.extend((kind, name) for name in names)
            stats = _summary_arrays(values, prob, axis=0, interval=interval, rope=rope)
            stats["n"] = n if n.size else np.full(len(names), total)
            for key, value in stats.items():
                columns.setdefault(key, []).append(value)
        frame = pd.DataFrame(
            {key: np.concatenate(parts) for key, parts in columns.items()},
            index=pd.MultiIndex.from_tuples(index, names=["kind", "name"]),
        )
        if frame["n"].isna().all():
            frame = frame.drop(columns="n")
        else:
            frame["n"] = frame["n"].astype("Int64")
        frame.attrs["hdi_prob"] = prob
        frame.attrs["baseline"] = self.baseline
        frame.attrs["site"] = self.site
        return frame

    def plot(
        self,
        *,
        prob: float | None = None,
        ax: Axes | Sequence[Axes] | np.ndarray | None = None,
        label: str | None = None,
        units: str | None = None,
        interval: str = "hdi",
    ) -> Figure:
        """Plot the posterior of each contrast's ATE and, if present, the per-group ATEs.

        The first panel shows a histogram density of each contrast's ATE draws
        (bins from the number of draws, shared by the contrasts) with its
        interval shaded and a dashed line at zero. When the tree has a
        ``by_group`` group, a second panel shows each group's posterior mean
        ATE with its interval as a bar, and each group's row count. Both panels
        share the effect axis's range; legends sit outside the data.

        Args:
            prob: Probability mass of the intervals, strictly between 0 and 1;
                ``None`` uses :attr:`hdi_prob`.
            ax: Where to draw. ``None`` creates a new figure with one panel per plot;
                a single Axes receives the ATE panel only; a sequence (or array) of two
                Axes receives the ATE panel and the per-group panel.
            label: The effect axis's label (default: "Average effect on <site>
                (vs <baseline>)").
            units: The outcome's units, shown on the effect axis (e.g. "USD").
            interval: ``"hdi"`` or ``"eti"`` (equal-tailed).

        Returns:
            The figure holding the plot.

        Raises:
            ValueError: If ``prob`` is not strictly between 0 and 1 or
                ``interval`` is unknown.
        """
        from dopax.effects.plot import plot_effects

        prob = self._resolve_prob(prob)
        if interval not in ("hdi", "eti"):
            raise ValueError(f"`interval` must be 'hdi' or 'eti'; got {interval!r}.")
        group_ate: dict[str, np.ndarray] | None = None
        groups = self.groups
        if groups is not None:
            pooled = self._group_ate()
            group_ate = {name: pooled[:, i, :] for i, name in enumerate(self.contrasts)}
        outcome = self.site or "outcome"
        xlabel = label if label is not None else f"Average effect on {outcome} (vs {self.baseline})"
        if units:
            xlabel = f"{xlabel} ({units})"
        counts = self.group_counts
        return plot_effects(
            self.ate_draws(),
            prob=prob,
            group_labels=groups,
            group_ate=group_ate,
            group_counts=None if counts is None or groups is None else [counts[g] for g in groups],
            ax=ax,
            xlabel=xlabel,
            interval=interval,
        )

    def to_datatree(self) -> xr.DataTree:
        """Return the wrapped effect-result tree."""
        return self._tree

    def __repr__(self) -> str:
        draws = self._dataset(DRAWS)
        n_draws = draws.sizes[CHAIN] * draws.sizes[DRAW]
        parts = [
            f"site={self.site!r}",
            f"baseline={self.baseline!r}",
            f"contrasts={list(self.contrasts)}",
            f"draws={n_draws}",
        ]
        groups = self.groups
        if groups is not None:
            parts.append(f"groups={len(groups)}")
        if ROWS in self._tree.children:
            parts.append(f"rows={self._dataset(ROWS).sizes.get('row', 0)}")
        return f"EffectResult({', '.join(parts)})"
