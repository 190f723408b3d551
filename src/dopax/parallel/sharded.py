"""Sharded, compiled block functions over all local devices.

A block is ``D`` draws by ``R`` rows. With ``shard_axis="obs"`` each device
takes ``R / n_dev`` consecutive rows (and computes their global row offset
itself) while the draws are replicated; with ``"draw"`` each device takes
``D / n_dev`` draws and all rows. Outputs reduced over rows (scenario sums)
are summed across devices. Since random numbers depend only on (key, draw,
row), the split changes no draw.

What a block computes is a :class:`BlockProgram`: the forward pass of
``predict`` and ``log_likelihood`` (:mod:`dopax.sampling.forward`) and the
scenario reducer of ``compare_scenarios`` (:mod:`dopax.effects.scenarios`)
are two such programs, run by one runner (:mod:`dopax.execution.runner`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Hashable
from typing import Any, NamedTuple, Protocol

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dopax.kernel.tracing import GuardedJit, guarded_jit

__all__ = [
    "OBS",
    "DRAW",
    "BlockFn",
    "BlockInputs",
    "BlockProgram",
    "OutputAxes",
    "compiled_block",
    "device_count",
    "local_mesh",
    "pad_leading",
    "place",
]

OBS = "obs"
DRAW = "draw"
_AXIS = "devices"

#: A compiled block function: ``fn(inputs)``, and ``fn.lower(inputs)``.
BlockFn = GuardedJit


class BlockInputs(NamedTuple):
    """Everything one block's program takes, as one pytree.

    Attributes:
        call_key: The call's PRNG key.
        draws: Global indices of the block's draws, shape ``(D,)``.
        row_offset: Global index of the block's first row.
        latent: Latent values to substitute, each leading with the block's draws.
        params: Values of the kernel's ``numpyro.param`` sites, used whole by
            every draw (an SVI fit's point estimates).
        rows: Inputs whose leaves lead with the block's rows.
        shared: Inputs used whole by every block.
        row_do: Intervention values leading with the block's rows.
        shared_do: Intervention values used whole.
        anchor: The anchor row's inputs (the call's first row).
        anchor_do: The anchor row's intervention values.
        row_latent: Values of per-row latent sites for the block's draws and
            rows, each ``(D, R, *rest)`` (rows second, whatever the site's
            own row axis).
        row_params: ``(row key words, parameters)``: the posterior's row key
            (two ``uint32`` words, used whole) and a guide's per-row
            parameters of per-row latent sites drawn in the program, by site
            and role, each ``(R, *rest)``.
    """

    call_key: Any
    draws: Any
    row_offset: Any
    latent: Any
    params: Any
    rows: Any
    shared: Any
    row_do: Any
    shared_do: Any
    anchor: Any
    anchor_do: Any
    row_latent: Any
    row_params: Any


@dataclasses.dataclass(frozen=True)
class OutputAxes:
    """Where one output of a block program keeps its draws and rows.

    Attributes:
        name: Output name.
        draw_axis: Axis of the output indexed by the block's draws, or ``None``.
        row_axis: Axis indexed by the block's rows, or ``None``.
        summed_over_rows: Whether the output is a sum over the block's rows
            (summed across devices when rows are split).
    """

    name: str
    draw_axis: int | None
    row_axis: int | None
    summed_over_rows: bool = False


class BlockProgram(Hashable, Protocol):
    """A hashable description of what one block computes (it keys compilation).

    ``local`` takes one :class:`BlockInputs` (or one device's share of it)
    and returns a dict of the outputs named in ``outputs``.
    """

    @property
    def outputs(self) -> tuple[OutputAxes, ...]:
        """The program's outputs."""
        ...

    def local(self, inputs: BlockInputs) -> dict[str, jax.Array]:
        """Compute one block (or one device's share of it)."""
        ...


@functools.cache
def local_mesh() -> Mesh:
    """Return a one-axis mesh over every local device."""
    return Mesh(np.array(jax.local_devices()), (_AXIS,))


def device_count() -> int:
    """Return the number of local devices."""
    return len(jax.local_devices())


def _out_spec(axes: OutputAxes, shard_axis: str) -> PartitionSpec:
    axis = axes.draw_axis if shard_axis == DRAW else axes.row_axis
    if shard_axis == OBS and axes.summed_over_rows:
        axis = None
    if axis is None:
        return PartitionSpec()
    return PartitionSpec(*([None] * axis), _AXIS)


def _first_leaf_rows(tree: Any) -> int:
    leaves = jax.tree.leaves(tree)
    return int(leaves[0].shape[0]) if leaves else 0


@functools.lru_cache(maxsize=64)
def compiled_block(program: BlockProgram, shard_axis: str, n_dev: int) -> BlockFn:
    """Return the jitted, sharded block function of ``program``.

    Shapes must divide by ``n_dev`` along the sharded axis.

    Args:
        program: What a block computes.
        shard_axis: ``"obs"`` or ``"draw"``.
        n_dev: Number of devices in the mesh.
    """
    sharded_rows = shard_axis == OBS and n_dev > 1
    summed = [a.name for a in program.outputs if a.summed_over_rows]

    def local(inputs: BlockInputs) -> dict[str, jax.Array]:
        if sharded_rows:
            offset = inputs.row_offset + jax.lax.axis_index(_AXIS) * _first_leaf_rows(inputs.rows)
            inputs = inputs._replace(row_offset=offset)
        out = program.local(inputs)
        if sharded_rows:
            for name in summed:
                out[name] = jax.lax.psum(out[name], _AXIS)
        return out

    if n_dev == 1:
        return guarded_jit(local)

    rep = PartitionSpec()
    split = PartitionSpec(_AXIS)
    in_specs = BlockInputs(*([rep] * len(BlockInputs._fields)))
    if shard_axis == OBS:
        in_specs = in_specs._replace(
            rows=split, row_do=split, row_latent=PartitionSpec(None, _AXIS), row_params=(rep, split)
        )
    else:
        in_specs = in_specs._replace(draws=split, latent=split, row_latent=split)
    out_specs = {axes.name: _out_spec(axes, shard_axis) for axes in program.outputs}
    mapped = jax.shard_map(
        local, mesh=local_mesh(), in_specs=(in_specs,), out_specs=out_specs, check_vma=False
    )
    return guarded_jit(mapped)


def place(tree: Any, shard: bool, axis: int = 0) -> Any:
    """Put a pytree of host arrays on the mesh, split on one axis or replicated.

    Args:
        tree: Arrays (the split axis divisible by the device count when ``shard``).
        shard: Whether to split ``axis`` across devices.
        axis: The axis to split (the leading one by default).
    """
    mesh = local_mesh()
    if len(mesh.devices.flat) == 1:
        return jax.device_put(tree, mesh.devices.flat[0])
    spec = PartitionSpec(*([None] * axis), _AXIS) if shard else PartitionSpec()
    sharding = NamedSharding(mesh, spec)
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
    import jax.numpy as jnp

    return jnp.concatenate([value, jnp.repeat(value[-1:], size - n, axis=0)], axis=0)
