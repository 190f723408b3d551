"""NumPyro's sampler statistics under ArviZ's names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["STAT_NAMES", "arviz_stats", "tree_depth"]

#: NumPyro state fields (as ``extra_fields`` names) and their ArviZ names.
STAT_NAMES: Mapping[str, str] = {
    "diverging": "diverging",
    "energy": "energy",
    "potential_energy": "lp",
    "num_steps": "n_steps",
    "accept_prob": "acceptance_rate",
    "adapt_state.step_size": "step_size",
}


def arviz_stats(fields: Mapping[str, Any], *, nuts: bool) -> dict[str, np.ndarray]:
    """Rename NumPyro's state fields to ArviZ's sample statistics.

    ``potential_energy`` becomes ``lp`` (negated), ``num_steps`` becomes
    ``n_steps`` and, for NUTS, also ``tree_depth`` (``floor(log2(n_steps)) +
    1``, as ArviZ's NumPyro converter computes it).

    Args:
        fields: NumPyro field name (see :data:`STAT_NAMES`) to array.
        nuts: Whether the sampler is NUTS.
    """
    out: dict[str, np.ndarray] = {}
    for field, name in STAT_NAMES.items():
        if field not in fields or fields[field] is None:
            continue
        value = np.asarray(fields[field])
        out[name] = -value if field == "potential_energy" else value
    if nuts and "n_steps" in out:
        out["tree_depth"] = tree_depth(out["n_steps"])
    return out


def tree_depth(n_steps: np.ndarray) -> np.ndarray:
    """NUTS tree depth from the number of steps, as ArviZ derives it."""
    return (np.log2(np.maximum(np.asarray(n_steps), 1)).astype(np.int64) + 1).astype(np.int64)
