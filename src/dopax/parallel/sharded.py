"""Sharded, compiled block functions over all local devices.

A block is ``D`` draws by ``R`` rows. With ``shard_axis="obs"`` each device
takes ``R / n_dev`` consecutive rows (and computes their global row offset
itself) while the draws are replicated; with ``"draw"`` each device takes
``D / n_dev`` draws and all rows. Either way no device talks to another, and
since random numbers depend only on (key, draw, row), the split changes
nothing in the results.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dopax.sampling.forward import CELLS_PER_STEP, PassSpec, forward_block

__all__ = ["OBS", "DRAW", "local_mesh", "compiled_block", "BlockFn"]

OBS = "obs"
DRAW = "draw"
_AXIS = "devices"

BlockFn = Callable[..., dict[str, jax.Array]]


@functools.cache
def local_mesh() -> Mesh:
    """Return a one-axis mesh over every local device."""
    return Mesh(np.array(jax.local_devices()), (_AXIS,))


def device_count() -> int:
    """Return the number of local devices."""
    return len(jax.local_devices())


def _out_spec(row_axis: int | None, shard_axis: str) -> PartitionSpec:
    if shard_axis == DRAW:
        return PartitionSpec(_AXIS)
    if row_axis is None:
        return PartitionSpec()
    return PartitionSpec(None, *([None] * row_axis), _AXIS)


@functools.lru_cache(maxsize=64)
def compiled_block(
    spec: PassSpec,
    row_axes: tuple[int | None, ...],
    shard_axis: str,
    n_dev: int,
    cells_per_step: int = CELLS_PER_STEP,
) -> BlockFn:
    """Return the jitted, sharded block function for a pass.

    The function takes ``(call_key, draw_indices, row_offset, latent, row_args,
    shared_args, row_intervention, shared_intervention, anchor_args,
    anchor_intervention)`` and returns each return site with a leading draw
    axis. Shapes must divide by ``n_dev`` along the sharded axis.

    Args:
        spec: The static pass description.
        row_axes: Each return site's row axis (``None`` for none).
        shard_axis: ``"obs"`` or ``"draw"``.
        n_dev: Number of devices in the mesh.
        cells_per_step: Draw-by-row cells per sequential step on each device
            (see :func:`~dopax.sampling.forward.forward_block`).
    """
    mesh = local_mesh()

    def local(
        call_key: jax.Array,
        draw_indices: jax.Array,
        row_offset: jax.Array,
        latent: Mapping[str, Any],
        row_args: Mapping[str, Any],
        shared_args: Mapping[str, Any],
        row_do: Mapping[str, Any],
        shared_do: Mapping[str, Any],
        anchor_args: Mapping[str, Any],
        anchor_do: Mapping[str, Any],
    ) -> dict[str, jax.Array]:
        if shard_axis == OBS and n_dev > 1:
            rows_here = next(iter(row_args.values())).shape[0] if row_args else 0
            row_offset = row_offset + jax.lax.axis_index(_AXIS) * rows_here
        return forward_block(
            spec,
            call_key,
            draw_indices,
            row_offset,
            latent,
            row_args,
            shared_args,
            row_do,
            shared_do,
            anchor_args,
            anchor_do,
            cells_per_step,
        )

    if n_dev == 1:
        return jax.jit(local)

    rep = PartitionSpec()
    split = PartitionSpec(_AXIS)
    if shard_axis == OBS:
        in_specs = (rep, rep, rep, rep, split, rep, split, rep, rep, rep)
    else:
        in_specs = (rep, split, rep, split, rep, rep, rep, rep, rep, rep)
    out_specs = {
        name: _out_spec(axis, shard_axis)
        for name, axis in zip(spec.return_sites, row_axes, strict=True)
    }
    mapped = jax.shard_map(
        local, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False
    )
    return jax.jit(mapped)


def place(tree: Any, shard: bool) -> Any:
    """Put a pytree of host arrays on the mesh, split on the leading axis or replicated.

    Args:
        tree: Arrays (leading axis divisible by the device count when ``shard``).
        shard: Whether to split the leading axis across devices.
    """
    mesh = local_mesh()
    if len(mesh.devices.flat) == 1:
        return jax.device_put(tree, mesh.devices.flat[0])
    sharding = NamedSharding(mesh, PartitionSpec(_AXIS) if shard else PartitionSpec())
    return jax.device_put(tree, sharding)


def pad_leading(value: Any, size: int) -> Any:
    """Pad the leading axis of ``value`` to ``size`` by repeating its last entry.

    Args:
        value: An array with a non-empty leading axis.
        size: The target length (at least the current one).
    """
    n = value.shape[0]
    if n == size:
        return value
    if isinstance(value, np.ndarray):
        return np.concatenate([value, np.repeat(value[-1:], size - n, axis=0)], axis=0)
    return jnp.concatenate([value, jnp.repeat(value[-1:], size - n, axis=0)], axis=0)
