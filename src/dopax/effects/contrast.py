"""Contrasts between two result trees: intervention minus baseline, draw by draw."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import xarray as xr

from dopax._warn import warn
from dopax.output import schema
from dopax.output.build import build_tree, tree_from_nodes
from dopax.output.schema import base_attrs

__all__ = ["contrast_sides", "contrast_trees"]

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


def contrast_sides(
    model: Any,
    baseline: tuple[Any, Mapping[str, Any] | None],
    intervention: tuple[Any, Mapping[str, Any] | None],
    *,
    on_batch: bool,
    shared_key: Callable[[Any], Any],
    num_chains: int = 1,
) -> xr.DataTree:
    """Compute the sides of ``estimate_effect`` given as arguments, then contrast them.

    Args:
        model: The fitted model (its ``predict`` or ``predict_on_batch`` runs the sides).
        baseline: ``(result tree, None)`` or ``(None, predict arguments)``.
        intervention: Likewise for the intervention.
        on_batch: Run sides with ``predict_on_batch`` instead of ``predict``.
        shared_key: Returns the call key from a given ``rng_key`` (or ``None``).
        num_chains: Chains of the model's posterior (for sides returned as dicts).
    """
    if (baseline[0] is None) == (baseline[1] is None):
        raise ValueError("Pass exactly one of `output_baseline` and `args_baseline`.")
    if (intervention[0] is None) == (intervention[1] is None):
        raise ValueError("Pass exactly one of `output_intervention` and `args_intervention`.")
    key = None
    given = [a for _, a in (baseline, intervention) if a is not None]
    if given:
        key = next((a.get("rng_key") for a in given if a.get("rng_key") is not None), None)
        key = shared_key(key)
    method = model.predict_on_batch if on_batch else model.predict

    def side(tree: Any, args: Mapping[str, Any] | None, label: str) -> xr.DataTree:
        if tree is not None:
            if not isinstance(tree, xr.DataTree):
                raise TypeError(
                    f"`output_{label}` must be a DataTree result; got {type(tree).__name__}."
                )
            return tree
        assert args is not None
        call = dict(args)
        call.setdefault("rng_key", key)
        if "X" not in call and model.param_input not in call:
            raise ValueError(f"`args_{label}` must include `X`.")
        X = call.pop("X", None)
        if X is None:
            X = call.pop(model.param_input)
        if not on_batch:
            call.setdefault("progress", False)
        result = method(X, **call)
        if isinstance(result, dict):  # `return_datatree=False` in the arguments
            in_sample = call.get("in_sample", True)
            group = schema.POSTERIOR_PREDICTIVE if in_sample else schema.PREDICTIONS
            return build_tree({group: result}, num_chains)
        assert isinstance(result, xr.DataTree)
        return result

    return contrast_trees(side(*baseline, "baseline"), side(*intervention, "intervention"))
