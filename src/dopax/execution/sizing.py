"""The one block-sizing policy of every call: blocks and steps from a memory budget.

Every call describes what its blocks hold with a :class:`Footprint`, and
:func:`size_blocks` turns it into a :class:`~dopax.parallel.batching.BlockPlan`:

* In-memory calls (the ``*_on_batch`` methods) run as one block.
* The budget (``ExecutionConfig.memory_budget_bytes``) covers every block
  alive at once: for a streamed forward pass ``pipeline_depth +
  writer_threads + 1`` blocks of outputs (queued, being written, being
  computed); for a scenario comparison ``host_threads + 1`` blocks of
  per-row contrasts (one computing, the others summarised on the host).
* A forward pass also pays the kernel's temporaries for one step of draws;
  they are read from XLA's memory analysis of the compiled block at two probe
  shapes (their slope, so fixed-size temporaries do not count as if they grew
  with the block). Steps get at most half the budget: a kernel whose
  intermediate values fuse away (a linear predictor and its noise) runs each
  block as one vectorised step, which XLA spreads over all cores; a neural
  network runs a few draws per step so that its activations stay bounded.
* On CPU, kernels dominated by matrix products (over
  ``matmul_flops_per_cell`` flops per cell, from XLA's cost analysis) run one
  draw per step: XLA's CPU batched matrix products cost about 1.25 x the time
  of one plain product per draw (``BENCHMARKS.md``, W2). Such blocks keep
  whole rows and split the draws. Scenario comparisons always run one draw
  per step (W3 measured faster so).
* Automatic row blocks are cut into equal blocks (no block of padding); a
  reduction over every draw (scenarios) rounds them up to a multiple of
  ``row_multiple`` rows, which XLA's CPU code ran twice as fast (W3).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from dopax.config import ExecutionConfig
from dopax.execution.runner import BlockJob, block_costs
from dopax.parallel.batching import BlockPlan, ceil_to, largest_divisor_at_most, plan_blocks

__all__ = ["Footprint", "size_blocks"]

#: ``cells_per_step`` that makes one vectorised step of any probe block.
_ONE_STEP = 1 << 62


@dataclasses.dataclass(frozen=True)
class Footprint:
    """What one block of a call holds in memory.

    Attributes:
        per_row: Bytes per draw and row of the block's outputs.
        per_draw: Bytes per draw of the outputs without rows.
        alive: Blocks alive at once.
        whole_draws: Every block holds every draw (reductions over draws).
        one_draw_steps: Run one draw per step (``None``: decide from the
            kernel's cost analysis).
        probe: Read the kernel's temporaries from XLA's analyses.
        in_one_block: Run the whole call as one block (in-memory calls).
    """

    per_row: int
    per_draw: int
    alive: int
    whole_draws: bool = False
    one_draw_steps: bool | None = None
    probe: bool = True
    in_one_block: bool = False


def _per_cell(job: BlockJob, config: ExecutionConfig, cache: dict[Any, Any]) -> tuple[float, float]:
    """Return the compiled block's ``(temporary bytes, flops)`` per (draw, row) cell."""
    n_rows = max(job.n_rows, 1)
    probe_draws, probe_rows = config.sizing_probe_draws, config.sizing_probe_rows
    if not job.split_rows:
        small = (min(2, job.n_draws), n_rows)
        large = (min(probe_draws, job.n_draws), n_rows)
    else:
        draws = min(probe_draws, job.n_draws)
        small = (draws, min(probe_rows, n_rows))
        large = (draws, min(4 * probe_rows, n_rows))
    shapes = jax.tree.map(
        lambda v: (tuple(getattr(v, "shape", ())), str(getattr(v, "dtype", ""))),
        (job.rows, job.shared),
    )
    key = (
        job.program,
        job.split_rows,
        small,
        large,
        tuple(jax.tree.leaves(shapes)),
        str(jax.tree.structure(shapes)),
    )
    cached = cache.get(key)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    program = dataclasses.replace(job.program, cells_per_step=_ONE_STEP)  # type: ignore[type-var]
    temp_small, flops_small = block_costs(job, program, *small)
    cells_small = small[0] * small[1]
    if large == small:
        per_cell = (temp_small / cells_small, flops_small / cells_small)
    else:
        temp_large, flops_large = block_costs(job, program, *large)
        cells_large = large[0] * large[1]
        slope = (temp_large - temp_small) / (cells_large - cells_small)
        per_cell = (max(slope, 0.0), flops_large / cells_large)
    if len(cache) > 256:
        cache.clear()
    cache[key] = per_cell
    return per_cell


def size_blocks(
    job: BlockJob,
    footprint: Footprint,
    *,
    chains: int,
    batch_size: int | None,
    config: ExecutionConfig,
    cache: dict[Any, Any],
) -> BlockPlan:
    """Choose block and step shapes so a call's memory stays within the budget.

    Args:
        job: The job.
        footprint: What its blocks hold.
        chains: Number of chains of the draws.
        batch_size: Rows per block asked for by the user, or ``None``.
        config: Execution settings.
        cache: Per-model cache of probe results, keyed by the program and shapes.
    """
    n_rows = max(job.n_rows, 1)
    min_step = config.min_cells_per_step
    if footprint.in_one_block:
        return BlockPlan(job.n_draws, n_rows, job.n_draws, job.n_rows, min_step)
    temp_cell, flops_cell = (0.0, 0.0)
    if footprint.probe:
        temp_cell, flops_cell = _per_cell(job, config, cache)
    budget = config.memory_budget_bytes
    alive = footprint.alive
    one_draw = footprint.one_draw_steps
    if one_draw is None:
        one_draw = flops_cell >= config.matmul_flops_per_cell and jax.default_backend() == "cpu"
    if footprint.whole_draws:
        return _whole_draw_blocks(job, footprint, batch_size, config)
    step_cells = max(min_step, int(min(1 << 40, (budget // 2) / max(temp_cell, 1e-9))))
    if one_draw and batch_size is None and job.split_rows:
        plan = _draw_blocks(job, chains, footprint, temp_cell, config)
        if plan is not None:
            return plan
    blocks = plan_blocks(
        n_draws=job.n_draws,
        draws_per_chain=job.n_draws // chains,
        n_rows=job.n_rows,
        bytes_per_draw_row=max(footprint.per_row, 1),
        bytes_per_draw=footprint.per_draw,
        budget=budget // alive,
        batch_size=batch_size,
        split_rows=job.split_rows,
        min_rows=config.min_batch_rows,
        max_rows=config.max_batch_rows,
    )

    def step_for(row_block: int) -> int:
        if one_draw:
            return max(min_step, min(step_cells, row_block))
        return step_cells

    draw_block, row_block = blocks.draw_block, blocks.row_block
    if batch_size is None and job.split_rows:
        while row_block > 1:
            outputs = draw_block * row_block * footprint.per_row + draw_block * footprint.per_draw
            step = min(draw_block * row_block, max(row_block, step_for(row_block)))
            if alive * outputs + temp_cell * step <= budget:
                break
            row_block = max(1, row_block // 2)
        row_block = _even_rows(job.n_rows, row_block)
    return BlockPlan(draw_block, row_block, blocks.n_draws, blocks.n_rows, step_for(row_block))


def _whole_draw_blocks(
    job: BlockJob, footprint: Footprint, batch_size: int | None, config: ExecutionConfig
) -> BlockPlan:
    """Blocks of every draw and a share of the rows (reductions over draws)."""
    n_rows = max(job.n_rows, 1)
    if not job.split_rows:
        row_block = n_rows
    elif batch_size is not None:
        row_block = min(batch_size, n_rows)
    else:
        per_row = max(job.n_draws * footprint.per_row, 1)
        row_block = int(
            max(1, min(n_rows, config.memory_budget_bytes // footprint.alive // per_row))
        )
        row_block = ceil_to(row_block, config.row_multiple)
    step = max(config.min_cells_per_step, row_block) if footprint.one_draw_steps else 1 << 40
    return BlockPlan(job.n_draws, row_block, job.n_draws, job.n_rows, step)


def _draw_blocks(
    job: BlockJob,
    chains: int,
    footprint: Footprint,
    temp_cell: float,
    config: ExecutionConfig,
) -> BlockPlan | None:
    """Blocks of whole rows and a share of the draws, for one-draw steps.

    A kernel run one draw per step does its matrix products on a whole row
    block at a time, so the more rows a step has the better (W2: 1000 draws x
    6,667 rows per block took 8.96 s, against 7.89 s with 10,000 rows). Such
    blocks keep every row (up to ``max_batch_rows``) and split the draws
    instead, into at least ``min_draw_blocks`` blocks so that the writers
    have a block to write while the next one computes. More blocks than that
    measured slower (W2: 8 blocks of 125 draws 8.46 s, 2 of 500 draws 7.97 s).
    Returns ``None`` when one draw of the rows does not fit the budget.
    """
    rows = _even_rows(job.n_rows, config.max_batch_rows)
    step_temp = temp_cell * rows
    room = config.memory_budget_bytes - step_temp
    one_draw = rows * footprint.per_row + footprint.per_draw
    if step_temp > config.memory_budget_bytes // 2 or room < footprint.alive * one_draw:
        return None
    draws_per_chain = job.n_draws // chains
    limit = min(
        int(room // (footprint.alive * one_draw)),
        max(1, draws_per_chain // config.min_draw_blocks),
    )
    draw_block = largest_divisor_at_most(draws_per_chain, limit)
    step = max(config.min_cells_per_step, rows)
    return BlockPlan(draw_block, rows, job.n_draws, job.n_rows, step)


def _even_rows(n_rows: int, cap: int) -> int:
    """Rows per block when ``n_rows`` is cut into equal blocks of at most ``cap`` rows.

    The last block is padded to the block shape (one compilation), so a ragged
    split would compute up to a block of padding.
    """
    n_rows = max(n_rows, 1)
    n_blocks = -(-n_rows // max(1, min(n_rows, cap)))
    return -(-n_rows // n_blocks)
