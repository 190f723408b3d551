"""Block sizes for a streamed call, from the outputs and the compiled program's own memory."""

from __future__ import annotations

import jax
import numpy as np

from dopax.config import ExecutionConfig
from dopax.parallel.batching import BlockPlan, largest_divisor_at_most, plan_blocks
from dopax.sampling.forward import CELLS_PER_STEP
from dopax.sampling.plan import FULL
from dopax.streaming.executor import Job, block_bytes

__all__ = ["size_blocks"]

_PROBE_DRAWS = 8
_PROBE_ROWS = 256
#: Flops per draw-row cell above which a kernel counts as dominated by matrix
#: products (a linear predictor with noise: tens; W2's network: about 90,000).
MATMUL_FLOPS_PER_CELL = 2_000.0

#: Fewest blocks the draws are split into when blocks keep whole rows.
MIN_DRAW_BLOCKS = 2


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


def _per_cell(job: Job, cache: dict[object, tuple[float, float]]) -> tuple[float, float]:
    """Return the compiled block's ``(temporary bytes, flops)`` per (draw, row) cell.

    Two probe blocks of different sizes are compiled with all draws in one
    vectorised step, and the slope of XLA's temporary bytes between them is
    taken, so that fixed-size temporaries (constants, the kernel's small
    parameters) do not count as if they grew with the block.
    """
    full = job.plan.path == FULL
    n_rows = max(job.n_rows, 1)
    if full:
        # Rows cannot be split: vary the draws.
        small = (min(2, job.n_draws), n_rows)
        large = (min(_PROBE_DRAWS, job.n_draws), n_rows)
    else:
        draws = min(_PROBE_DRAWS, job.n_draws)
        small = (draws, min(_PROBE_ROWS, n_rows))
        large = (draws, min(4 * _PROBE_ROWS, n_rows))
    key = (
        job.spec,
        job.plan,
        small,
        large,
        tuple((k, np.shape(v)[1:]) for k, v in sorted(job.rows.items())),
        tuple((k, np.shape(v)) for k, v in sorted(job.shared.items())),
    )
    cached = cache.get(key)
    if cached is not None:
        return cached
    temp_small, _, flops_small = block_bytes(job, *small)
    cells_small = small[0] * small[1]
    if large == small:
        per_cell = (temp_small / cells_small, flops_small / cells_small)
    else:
        temp_large, _, flops_large = block_bytes(job, *large)
        cells_large = large[0] * large[1]
        slope = (temp_large - temp_small) / (cells_large - cells_small)
        per_cell = (max(slope, 0.0), flops_large / cells_large)
    cache[key] = per_cell
    return per_cell


def size_blocks(
    job: Job,
    *,
    chains: int,
    batch_size: int | None,
    config: ExecutionConfig,
    cache: dict[object, tuple[float, float]],
) -> BlockPlan:
    """Choose block and step shapes so a call's streaming memory stays within the budget.

    The budget covers every block alive at once: up to
    ``pipeline_depth + writer_threads + 1`` blocks of outputs (queued, being
    written, being computed) plus the temporaries of one step of draws inside
    the block being computed. Sizing blocks from the whole pipeline, rather
    than from one block, makes peak memory the same for a call that fills the
    pipeline (millions of rows) and one that barely does (``BENCHMARKS.md``,
    W4). Temporaries per (draw, row) cell are read from XLA's memory
    analysis of the compiled block function at two probe shapes. Steps get at
    most half the budget: a kernel whose intermediate values fuse away (a
    linear predictor and its noise) runs each block as one vectorised step,
    which XLA spreads over all cores; a neural network runs a few draws per
    step so that its activations stay bounded. On CPU, kernels dominated by
    matrix products (over :data:`MATMUL_FLOPS_PER_CELL` flops per cell, from
    XLA's cost analysis) run one draw per step: XLA's CPU batched matrix
    products cost about 1.25 x the time of one plain product per draw
    (``BENCHMARKS.md``, W2). The outputs alone set the floor of the block size.

    Args:
        job: The job.
        chains: Number of chains of the draws.
        batch_size: Rows per block asked for by the user, or ``None``.
        config: Execution settings (memory budget, row bounds).
        cache: Per-model cache of probe results, keyed by the pass and shapes.
    """
    per_row, per_draw = output_bytes(job)
    full = job.plan.path == FULL
    temp_cell, flops_cell = _per_cell(job, cache)
    budget = config.memory_budget_bytes
    alive = config.pipeline_depth + config.writer_threads + 1
    step_cells = int(min(1 << 40, (budget // 2) / max(temp_cell, 1e-9)))
    step_cells = max(CELLS_PER_STEP, step_cells)
    one_draw_steps = flops_cell >= MATMUL_FLOPS_PER_CELL and jax.default_backend() == "cpu"
    if one_draw_steps and batch_size is None and not full:
        plan = _draw_blocks(job, chains, per_row, per_draw, temp_cell, alive, config)
        if plan is not None:
            return plan
    blocks = plan_blocks(
        n_draws=job.n_draws,
        draws_per_chain=job.n_draws // chains,
        n_rows=job.n_rows,
        bytes_per_draw_row=max(per_row, 1),
        bytes_per_draw=per_draw,
        budget=budget // alive,
        batch_size=batch_size,
        split_rows=not full,
        min_rows=config.min_batch_rows,
        max_rows=config.max_batch_rows,
    )

    def step_for(row_block: int) -> int:
        if one_draw_steps:
            return max(CELLS_PER_STEP, min(step_cells, row_block))
        return step_cells

    draw_block, row_block = blocks.draw_block, blocks.row_block
    if batch_size is None and not full:
        while row_block > 1:
            outputs = draw_block * row_block * per_row + draw_block * per_draw
            step = min(draw_block * row_block, max(row_block, step_for(row_block)))
            if alive * outputs + temp_cell * step <= budget:
                break
            row_block = max(1, row_block // 2)
        row_block = _even_rows(job.n_rows, row_block)
    step_cells = step_for(row_block)
    return BlockPlan(draw_block, row_block, blocks.n_draws, blocks.n_rows, step_cells)


def _draw_blocks(
    job: Job,
    chains: int,
    per_row: int,
    per_draw: int,
    temp_cell: float,
    alive: int,
    config: ExecutionConfig,
) -> BlockPlan | None:
    """Blocks of whole rows and a share of the draws, for one-draw steps.

    A kernel run one draw per step does its matrix products on a whole row
    block at a time, so the more rows a step has the better (W2: 1000 draws x
    6,667 rows per block took 8.96 s, against 7.89 s with 10,000 rows). Such
    blocks keep every row (up to ``max_batch_rows``) and split the draws
    instead, into at least :data:`MIN_DRAW_BLOCKS` blocks so that the writers
    have a block to write while the next one computes. More blocks than that
    measured slower (W2: 8 blocks of 125 draws 8.46 s, 2 of 500 draws 7.97 s).
    Returns ``None`` when one draw of the rows does not fit the budget.
    """
    rows = _even_rows(job.n_rows, config.max_batch_rows)
    step_temp = temp_cell * rows
    room = config.memory_budget_bytes - step_temp
    one_draw = rows * per_row + per_draw
    if step_temp > config.memory_budget_bytes // 2 or room < alive * one_draw:
        return None
    draws_per_chain = job.n_draws // chains
    limit = min(int(room // (alive * one_draw)), max(1, draws_per_chain // MIN_DRAW_BLOCKS))
    draw_block = largest_divisor_at_most(draws_per_chain, limit)
    return BlockPlan(draw_block, rows, job.n_draws, job.n_rows, max(CELLS_PER_STEP, rows))


def _even_rows(n_rows: int, cap: int) -> int:
    """Rows per block when ``n_rows`` is cut into equal blocks of at most ``cap`` rows.

    The last block is padded to the block shape (one compilation), so a ragged
    split would compute up to a block of padding.
    """
    n_rows = max(n_rows, 1)
    n_blocks = -(-n_rows // max(1, min(n_rows, cap)))
    return -(-n_rows // n_blocks)
