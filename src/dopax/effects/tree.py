"""The effect result's tree, from a comparison's accumulated summaries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from dopax.effects.reduce import EffectAccumulator
from dopax.output.build import tree_from_nodes
from dopax.output.schema import (
    CHAIN,
    CONTRAST,
    DRAW,
    EFFECT_BY_GROUP,
    EFFECT_DRAWS,
    EFFECT_ROWS,
    GROUP,
    ROW,
    SCENARIO,
)

__all__ = ["effect_tree"]


def effect_tree(
    acc: EffectAccumulator,
    names: list[str],
    b_index: int,
    codes: np.ndarray,
    labels: np.ndarray,
    grouped: bool,
    chains: int,
    n_rows: int,
    attrs: Mapping[str, Any],
) -> xr.DataTree:
    """Return the tree of an effect result (layout: :mod:`dopax.effects.result`).

    Args:
        acc: The comparison's accumulated sums and per-row summaries.
        names: Scenario names.
        b_index: Index of the baseline scenario.
        codes: Each row's group code.
        labels: Group labels.
        grouped: Whether the call grouped rows (``by``).
        chains: Number of chains of the draws.
        n_rows: Number of rows.
        attrs: Root attributes.
    """
    sums, group_sums = acc.sums, acc.group_sums
    n_draws = sums.shape[1]
    shape = (chains, n_draws // chains)
    means = (sums / max(n_rows, 1)).T.reshape(*shape, len(names))
    others = [i for i in range(len(names)) if i != b_index]
    contrasts = [f"{names[i]} - {names[b_index]}" for i in others]
    ate = means[..., others] - means[..., [b_index]]
    relative = ate / means[..., [b_index]]
    coords = {
        CHAIN: np.arange(shape[0]),
        DRAW: np.arange(shape[1]),
        SCENARIO: np.asarray(names),
        CONTRAST: np.asarray(contrasts),
    }
    nodes: dict[str, xr.Dataset] = {
        EFFECT_DRAWS: xr.Dataset(
            {
                "mean": ((CHAIN, DRAW, SCENARIO), means),
                "ate": ((CHAIN, DRAW, CONTRAST), ate),
                "relative": ((CHAIN, DRAW, CONTRAST), relative),
            },
            coords={
                **coords,
                "contrast_scenario": (CONTRAST, np.asarray([names[i] for i in others])),
            },
        )
    }
    if grouped:
        counts = np.bincount(codes, minlength=len(labels)).astype(np.float64)
        g_means = group_sums / np.maximum(counts, 1.0)  # (S, D, G)
        g_means = np.moveaxis(g_means, 0, 1).reshape(*shape, len(names), len(labels))
        g_ate = g_means[:, :, others, :] - g_means[:, :, [b_index], :]
        nodes[EFFECT_BY_GROUP] = xr.Dataset(
            {
                "mean": ((CHAIN, DRAW, SCENARIO, GROUP), g_means),
                "ate": ((CHAIN, DRAW, CONTRAST, GROUP), g_ate),
                "count": ((GROUP,), counts.astype(np.int64)),
            },
            coords={**coords, GROUP: labels},
        )
    nodes[EFFECT_ROWS] = xr.Dataset(
        {
            "effect_mean": ((CONTRAST, ROW), acc.mean),
            "effect_lower": ((CONTRAST, ROW), acc.lower),
            "effect_upper": ((CONTRAST, ROW), acc.upper),
        },
        coords={CONTRAST: np.asarray(contrasts), ROW: np.arange(n_rows)},
        attrs={"interval_prob": acc.interval},
    )
    return tree_from_nodes(nodes, {**attrs, "n_rows": int(n_rows)})
