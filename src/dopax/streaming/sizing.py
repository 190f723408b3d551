"""Block sizes for a streamed call, from the outputs and the compiled program's own memory."""

from __future__ import annotations

import numpy as np

from dopax.config import ExecutionConfig
from dopax.parallel.batching import BlockPlan, plan_blocks
from dopax.sampling.plan import FULL
from dopax.streaming.executor import Job, block_bytes

__all__ = ["size_blocks"]

_PROBE_DRAWS = 8
_PROBE_ROWS = 256


def output_bytes(job: Job) -> tuple[int, int]:
    """Return ``(bytes per draw and row, bytes per draw)`` of the job's outputs.

    Args:
        job: The job.
    """
    per_row = 0
    per_draw = 0
    for info in job.plan.outputs:
        itemsize = np.dtype(info.dtype).itemsize
        if info.row_axis is None:
            per_draw += int(np.prod(info.shape, dtype=np.int64)) * itemsize
        else:
            rest = [s for i, s in enumerate(info.shape) if i != info.row_axis]
            per_row += int(np.prod(rest, dtype=np.int64)) * itemsize
    return per_row, per_draw


def size_blocks(
    job: Job,
    *,
    chains: int,
    batch_size: int | None,
    config: ExecutionConfig,
    cache: dict[object, float],
) -> BlockPlan:
    """Choose block shapes so one block's working memory stays within the budget.

    The working memory of a block is read from XLA's memory analysis of the
    compiled block function at a small probe shape and scaled per (draw, row)
    cell; the outputs alone set the floor.

    Args:
        job: The job.
        chains: Number of chains of the draws.
        batch_size: Rows per block asked for by the user, or ``None``.
        config: Execution settings (memory budget, row bounds).
        cache: Per-model cache of probe results, keyed by the pass and shapes.
    """
    per_row, per_draw = output_bytes(job)
    full = job.plan.path == FULL
    probe_draws = min(_PROBE_DRAWS, job.n_draws)
    probe_rows = max(job.n_rows, 1) if full else min(_PROBE_ROWS, max(job.n_rows, 1))
    key = (
        job.spec,
        job.plan,
        probe_draws,
        probe_rows,
        tuple((k, np.shape(v)[1:]) for k, v in sorted(job.rows.items())),
        tuple((k, np.shape(v)) for k, v in sorted(job.shared.items())),
    )
    per_cell = cache.get(key)
    if per_cell is None:
        per_cell = block_bytes(job, probe_draws, probe_rows) / (probe_draws * probe_rows)
        cache[key] = per_cell
    # The probe block runs in one vmapped step, so its per-cell bytes bound the
    # working memory of a step; a step covers max(rows, CELLS) cells (one draw
    # per step once a block has CELLS rows), and outputs fill the whole block.
    budget = config.memory_budget_bytes
    blocks = plan_blocks(
        n_draws=job.n_draws,
        draws_per_chain=job.n_draws // chains,
        n_rows=job.n_rows,
        bytes_per_draw_row=max(per_row, 1),
        bytes_per_draw=per_draw,
        budget=budget,
        batch_size=batch_size,
        split_rows=not full,
        min_rows=config.min_batch_rows,
        max_rows=config.max_batch_rows,
    )
    if batch_size is not None or full:
        return blocks
    draw_block, row_block = blocks.draw_block, blocks.row_block
    while row_block > 1:
        outputs = draw_block * row_block * per_row + draw_block * per_draw
        working = per_cell * max(row_block, _step_cells())
        if outputs + working <= budget:
            break
        row_block = max(1, row_block // 2)
    return BlockPlan(draw_block, row_block, blocks.n_draws, blocks.n_rows)


def _step_cells() -> int:
    from dopax.sampling.forward import CELLS_PER_STEP

    return CELLS_PER_STEP
