"""The sides of ``estimate_effect`` given as arguments: computed by the model, then contrasted."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import xarray as xr

from dopax.effects.contrast import contrast_trees
from dopax.output import schema
from dopax.output.build import build_tree

__all__ = ["contrast_sides"]


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
