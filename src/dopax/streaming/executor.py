"""Running a planned forward pass block by block.

The executor cuts the (draws x rows) job into blocks, dispatches each block
to the compiled, sharded block function (JAX dispatch is asynchronous, so the
next block computes while earlier ones are transferred and written), and hands
every output block to an ``emit`` callback with its index in the flat
``(draws, *site_shape)`` layout.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dopax.parallel.batching import BlockPlan, ceil_to
from dopax.parallel.sharded import DRAW, OBS, compiled_block, device_count, pad_leading, place
from dopax.sampling.forward import CELLS_PER_STEP, PassSpec
from dopax.sampling.plan import FULL, ForwardPlan
from dopax.sampling.prepare import read_rows

__all__ = ["Job", "run_job", "Emit"]

logger = logging.getLogger("dopax")

Emit = Callable[[str, tuple[slice, ...], Any], None]


@dataclasses.dataclass
class Job:
    """Everything a forward pass needs, ready to run.

    Attributes:
        spec: The static pass description (with the plan's global latents).
        plan: The plan of the pass.
        call_key: The call's PRNG key.
        latent: Latent values to substitute, leading flat draw axis.
        n_draws: Number of draws (flat, all chains).
        n_rows: Number of rows.
        rows: Kernel arguments with a leading row axis (host or device arrays).
        shared: Array kernel arguments used whole.
        intervention: Site name to value (already validated by the plan).
        shard_axis: ``"obs"`` or ``"draw"``.
    """

    spec: PassSpec
    plan: ForwardPlan
    call_key: jax.Array
    latent: Mapping[str, Any]
    n_draws: int
    n_rows: int
    rows: Mapping[str, Any]
    shared: Mapping[str, Any]
    intervention: Mapping[str, Any]
    shard_axis: str = OBS


def _slice_rows(tree: Mapping[str, Any], start: int, stop: int, size: int) -> dict[str, Any]:
    return {k: pad_leading(read_rows(v, start, stop), size) for k, v in tree.items()}


class _Runner:
    """The compiled block function of a job and its whole-call arguments."""

    def __init__(self, job: Job, cells_per_step: int = CELLS_PER_STEP) -> None:
        self.job = job
        self.n_dev = device_count()
        self.full = job.plan.path == FULL
        shard_axis = job.shard_axis
        if self.full or self.n_dev == 1:
            shard_axis = DRAW if self.n_dev > 1 else OBS
        self.shard_axis = shard_axis
        row_axes = tuple(info.row_axis for info in job.plan.outputs)
        self.fn = compiled_block(job.spec, row_axes, shard_axis, self.n_dev, cells_per_step)
        row_names = set(job.plan.row_intervention_sites)
        self.row_do = {k: v for k, v in job.intervention.items() if k in row_names}
        self.shared_do = place(
            {k: jnp.asarray(v) for k, v in job.intervention.items() if k not in row_names}, False
        )
        self.shared = place({k: jnp.asarray(v) for k, v in job.shared.items()}, False)
        self.anchor = place(
            {k: jnp.asarray(read_rows(v, 0, 1)) for k, v in job.rows.items()}, False
        )
        self.anchor_do = place(
            {k: jnp.asarray(read_rows(v, 0, 1)) for k, v in self.row_do.items()}, False
        )
        self._draw_cache: dict[tuple[int, int], tuple[Any, Any]] = {}

    def padded(self, nd: int, nr: int) -> tuple[int, int]:
        """Return the block's draw and row counts padded for the device split."""
        pad_d = ceil_to(nd, self.n_dev) if self.shard_axis == DRAW else nd
        pad_r = ceil_to(nr, self.n_dev) if (self.shard_axis == OBS and not self.full) else nr
        return pad_d, pad_r

    def _draw_args(self, d0: int, d1: int) -> tuple[Any, Any]:
        """Return the placed draw indices and latent values of draws ``d0:d1``.

        Blocks iterate rows outer and draws inner, and usually hold every draw,
        so the latent values (a network's weights: hundreds of MB) are put on
        the devices once per draw range rather than once per block.
        """
        cached = self._draw_cache.get((d0, d1))
        if cached is None:
            job = self.job
            pad_d, _ = self.padded(d1 - d0, 1)
            split_draws = self.shard_axis == DRAW and self.n_dev > 1
            draws = pad_leading(np.arange(d0, d1, dtype=np.int32), pad_d)
            latent = {k: pad_leading(v[d0:d1], pad_d) for k, v in job.latent.items()}
            cached = (place(draws, split_draws), place(latent, split_draws))
            if len(self._draw_cache) >= 2:
                self._draw_cache.clear()
            self._draw_cache[(d0, d1)] = cached
        return cached

    def args(self, d0: int, d1: int, r0: int, r1: int) -> tuple[Any, ...]:
        """Return the block function's arguments for one block."""
        job = self.job
        _, pad_r = self.padded(d1 - d0, r1 - r0)
        draws, latent = self._draw_args(d0, d1)
        rows = _slice_rows(job.rows, r0, r1, pad_r)
        rdo = _slice_rows(self.row_do, r0, r1, pad_r)
        split_rows = self.shard_axis == OBS and self.n_dev > 1
        return (
            job.call_key,
            draws,
            jnp.asarray(r0, jnp.uint32),
            latent,
            place(rows, split_rows),
            self.shared,
            place(rdo, split_rows),
            self.shared_do,
            self.anchor,
            self.anchor_do,
        )


def block_bytes(job: Job, draws: int, rows: int) -> tuple[int, int, float]:
    """Return ``(temporary bytes, output bytes, flops)`` of one block of ``draws x rows``.

    Reads XLA's own memory analysis of the block function compiled at that
    shape with all draws in one vectorised step, so kernels with large
    intermediate values (e.g. neural-network activations) get smaller steps
    and blocks than their outputs alone would suggest.

    Args:
        job: The job.
        draws: Draws in the probe block.
        rows: Rows in the probe block.
    """
    runner = _Runner(job, cells_per_step=1 << 62)
    args = runner.args(0, min(draws, job.n_draws), 0, min(rows, max(job.n_rows, 1)))
    compiled: Any = runner.fn
    executable = compiled.lower(*args).compile()
    stats = executable.memory_analysis()
    flops = 0.0
    try:
        cost = executable.cost_analysis()
        if isinstance(cost, list | tuple):  # older JAX: one dict per program
            cost = cost[0] if cost else {}
        flops = float((cost or {}).get("flops", 0.0))
    except Exception:  # pragma: no cover - backends without cost analysis
        flops = 0.0
    if stats is None:  # pragma: no cover - backends without memory analysis
        return 0, 0, flops
    return int(stats.temp_size_in_bytes), int(stats.output_size_in_bytes), flops


def run_job(
    job: Job,
    blocks: BlockPlan,
    emit: Emit,
    *,
    on_block: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Run every block of ``job`` and pass each output block to ``emit``.

    Args:
        job: The job.
        blocks: How to cut it into blocks.
        emit: Called as ``emit(site, index, block)`` for each output block
            (``block`` a JAX array still being computed, possibly).
        on_block: Called with ``(rows_in_block, draws_in_block)`` after each
            block is dispatched (for progress bars).
        should_stop: Polled between blocks; when it returns ``True`` the run
            stops early (the caller reports why).
    """
    runner = _Runner(job, blocks.step_cells)
    infos = job.plan.outputs
    for d0, d1, r0, r1 in blocks.blocks():
        if should_stop is not None and should_stop():
            return
        nd, nr = d1 - d0, r1 - r0
        pad_d, pad_r = runner.padded(nd, nr)
        out = runner.fn(*runner.args(d0, d1, r0, r1))
        for info in infos:
            # Take each output out of ``out`` and drop it once handed over, so
            # this loop never keeps a block alive while waiting for the writers
            # (the memory budget counts one block here).
            value = out.pop(info.name)
            if pad_d != nd:
                value = value[:nd]
            if info.row_axis is None:
                if r0 != 0:
                    continue
                index: tuple[slice, ...] = (slice(d0, d1),)
            else:
                if pad_r != nr:
                    value = jax.lax.slice_in_dim(value, 0, nr, axis=info.row_axis + 1)
                index = (
                    slice(d0, d1),
                    *(
                        slice(r0, r1) if axis == info.row_axis else slice(None)
                        for axis in range(len(info.shape))
                    ),
                )
            emit(info.name, index, value)
            del value
        del out
        if on_block is not None:
            on_block(nr, nd)
