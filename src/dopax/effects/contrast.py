"""Contrasts between two result trees: intervention minus baseline, draw by draw."""

from __future__ import annotations

import xarray as xr

from dopax.output import schema
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

    Args:
        baseline: A result tree with one predictive group.
        intervention: A result tree with the same predictive group.

    Raises:
        ValueError: If the groups, variables or sizes differ.
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
    for name in shared:
        if base[name].sizes != inter[name].sizes:
            raise ValueError(
                f"Variable {name!r} has sizes {dict(base[name].sizes)} in the baseline but "
                f"{dict(inter[name].sizes)} in the intervention; contrast results of equal "
                "draws and rows."
            )
    diff = xr.Dataset({name: inter[name] - base[name] for name in shared})
    children = {g_base: xr.DataTree(diff)}
    if schema.POSTERIOR in baseline.children:
        children[schema.POSTERIOR] = xr.DataTree(baseline[schema.POSTERIOR].to_dataset())
    tree = xr.DataTree(children=children)
    tree.attrs.update(base_attrs({"contrast": "intervention - baseline"}))
    return tree
