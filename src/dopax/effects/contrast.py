"""Contrasts between two result trees: intervention minus baseline, draw by draw."""

from __future__ import annotations

import xarray as xr

from dopax._warn import warn
from dopax.output import schema
from dopax.output.build import tree_from_nodes
from dopax.output.schema import base_attrs

__all__ = ["contrast_trees"]

_PREDICTIVE = (schema.POSTERIOR_PREDICTIVE, schema.PREDICTIONS, schema.PRIOR_PREDICTIVE)


def _predictive_group(tree: xr.DataTree, label: str) -> str:
    groups = [g for g in _PREDICTIVE if g in tree.children]
    if len(groups) != 1:
        raise ValueError(
            f"`{label}` must hold exactly one predictive group of {list(_PREDICTIVE)}; "
            f"it holds {sorted(str(c) for c in tree.children)}."
        )
    return groups[0]


def contrast_trees(baseline: xr.DataTree, intervention: xr.DataTree) -> xr.DataTree:
    """Return ``intervention - baseline`` for every shared variable, lazily.

    Sides of different sizes (draws or rows) are contrasted where their
    coordinates overlap, with a warning. The root attributes
    ``artifact_path_baseline`` and ``artifact_path_intervention`` record
    where persisted sides live.

    Args:
        baseline: A result tree with one predictive group.
        intervention: A result tree with the same predictive group.

    Raises:
        ValueError: If the groups differ or no variable is shared.
    """
    g_base = _predictive_group(baseline, "output_baseline")
    g_int = _predictive_group(intervention, "output_intervention")
    if g_base != g_int:
        raise ValueError(
            f"The baseline holds {g_base!r} but the intervention holds {g_int!r}; "
            "contrast results of the same kind."
        )
    base = baseline[g_base].to_dataset()
    inter = intervention[g_int].to_dataset()
    shared = sorted(str(n) for n in set(base.data_vars) & set(inter.data_vars))
    if not shared:
        raise ValueError("The two results share no variable to contrast.")
    differ = {
        name: (dict(base[name].sizes), dict(inter[name].sizes))
        for name in shared
        if base[name].sizes != inter[name].sizes
    }
    if differ:
        name, (b_sizes, i_sizes) = next(iter(differ.items()))
        warn(
            f"The two sides differ in size: {sorted(differ)} (e.g. {name!r} has sizes "
            f"{b_sizes} in the baseline but {i_sizes} in the intervention); the contrast "
            "holds only the draws and rows both sides have. Contrast results of equal draws "
            "and rows (same `X` length and posterior) for a draw-by-draw effect of every row.",
            UserWarning,
        )
    diff = xr.Dataset(
        {name: inter[name] - base[name] for name in shared}  # aligned: the overlap
    )
    nodes = {g_base: diff}
    if schema.POSTERIOR in baseline.children:
        nodes[schema.POSTERIOR] = baseline[schema.POSTERIOR].to_dataset()
    attrs = {
        key: baseline.attrs[key]
        for key in (schema.DEVICES_ATTR, schema.SHARD_AXIS_ATTR)
        if key in baseline.attrs
    }
    for label, side in (("baseline", baseline), ("intervention", intervention)):
        if "artifact_path" in side.attrs:
            attrs[f"artifact_path_{label}"] = side.attrs["artifact_path"]
    return tree_from_nodes(nodes, base_attrs({**attrs, "contrast": "intervention - baseline"}))
