"""The one builder of in-memory result trees."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from dopax.output.schema import base_attrs, position_coords, site_dims, split_draws

__all__ = ["dataset_from_draws", "build_tree", "tree_from_nodes"]


def dataset_from_draws(arrays: Mapping[str, Any], num_chains: int) -> xr.Dataset:
    """Build a Dataset from flat-draw arrays.

    Args:
        arrays: Variable name to array with a leading flat draw axis
            (``chains * draws``, chain-major).
        num_chains: Number of chains in the flat draw axis.
    """
    data_vars = {}
    sizes: dict[str, int] = {}
    for name, value in arrays.items():
        arr = np.asarray(value)
        chains, draws = split_draws(arr.shape[0], num_chains)
        arr = arr.reshape(chains, draws, *arr.shape[1:])
        dims = site_dims(name, arr.ndim - 2)
        data_vars[name] = (dims, arr)
        for dim, size in zip(dims, arr.shape, strict=True):
            sizes.setdefault(dim, size)
    return xr.Dataset(data_vars, coords=position_coords(sizes))


def build_tree(
    groups: Mapping[str, Mapping[str, Any]],
    num_chains: int | Mapping[str, int],
    attrs: Mapping[str, Any] | None = None,
) -> xr.DataTree:
    """Build a result tree from groups of flat-draw arrays.

    Args:
        groups: Group name to (variable name to flat-draw array). Empty groups
            are left out.
        num_chains: Chains of every group, or per group.
        attrs: Extra root attributes (``created_at`` and ``dopax_version`` are
            always set).
    """
    nodes = {}
    for group, arrays in groups.items():
        if not arrays:
            continue
        chains = num_chains if isinstance(num_chains, int) else num_chains[group]
        nodes[group] = dataset_from_draws(arrays, chains)
    return tree_from_nodes(nodes, base_attrs(attrs))


def tree_from_nodes(
    nodes: Mapping[str, xr.Dataset | xr.DataTree], attrs: Mapping[str, Any] | None = None
) -> xr.DataTree:
    """Assemble a tree from its child groups and root attributes.

    Every result tree dopax returns (predictive results, effect results,
    contrasts, sinks' trees) is put together here.

    Args:
        nodes: Child name to its Dataset (or a whole subtree).
        attrs: Root attributes, taken as given.
    """
    children = {
        name: node if isinstance(node, xr.DataTree) else xr.DataTree(node)
        for name, node in nodes.items()
    }
    tree = xr.DataTree(children=children)
    tree.attrs.update(dict(attrs or {}))
    return tree
