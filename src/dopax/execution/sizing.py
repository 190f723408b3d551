"""The one block-sizing policy of every call: blocks and steps from a memory budget.

Every call describes what its blocks hold with a :class:`Footprint`, and
:func:`size_blocks` turns it into a :class:`~dopax.parallel.batching.BlockPlan`:

* In-memory calls (the ``*_on_batch`` methods) run as one block.
* The budget (``ExecutionConfig.budget_bytes``: ``memory_budget_bytes``, or
  by default 128 MiB for forward passes and 256 MiB for scenario
  comparisons) covers every block alive at once: for a streamed forward
  pass ``pipeline_depth + writer_threads + 1`` blocks of outputs (queued,
  being written, being computed); for calls that reduce over every draw of
  their rows (scenario comparisons, ``summarize``, ``loo``) the blocks their
  callers count, each holding every draw of its rows.
* A forward pass also pays the kernel's temporaries for one step of draws,
  read from XLA's memory analysis of the block program compiled at the
  chosen block shape: the very program the run then uses (JAX keeps the
  executable), so sizing costs no compilation of its own. Blocks are first
  sized from their outputs; when the compiled block's temporaries (beyond
  ``free_temp_bytes``) do not fit the budget beside them, steps and blocks
  are sized again from the temporaries per cell of that compilation. Steps
  get at most half the budget: a kernel whose intermediate values fuse away
  (a linear predictor and its noise) runs each block as one vectorised step,
  which XLA spreads over all cores; a neural network runs a few draws per
  step so that its activations stay bounded.
* On CPU, kernels dominated by matrix products (over
  ``matmul_flops_per_cell`` flops of matrix products per cell, counted in the
  kernel's probes, or else XLA's cost analysis of the lowered block) run one
  draw per step: XLA's CPU batched matrix products cost more than one plain
  product per draw. Such blocks keep whole rows and split the draws.
  Scenario comparisons are sized with one draw per step, which bounds the
  kernel's temporaries for any kernel; they then take wider steps where the
  compiled block shows room (:func:`widen_steps`).
* Automatic row blocks are cut into equal blocks (no block of padding); a
  reduction over every draw (scenarios) rounds them up to a multiple of
  ``row_multiple`` rows, on which XLA's CPU code runs faster.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from dopax.config import ExecutionConfig
from dopax.execution.runner import BlockJob, compiled_temp_bytes, lower_block, lowered_flops
from dopax.parallel.batching import BlockPlan, ceil_to, largest_divisor_at_most, plan_blocks

__all__ = ["WIDE_STEP_CELLS", "Footprint", "size_blocks", "widen_steps"]

#: Called with a line saying what is being prepared (e.g. before a compilation).
Announce = Callable[[str], None]


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


def _lower(job: BlockJob, plan: BlockPlan) -> Any:
    """Lower the job's program for its first block under ``plan`` (as the run calls it)."""
    program = dataclasses.replace(job.program, cells_per_step=plan.step_cells)  # type: ignore[type-var]
    return lower_block(job, program, plan.draw_block, plan.row_block, plan.row_block)


def _budget(footprint: Footprint, config: ExecutionConfig) -> int:
    # blocks holding every draw of their rows (scenario comparisons, summaries)
    return config.budget_bytes(scenarios=footprint.whole_draws)


def _fits(plan: BlockPlan, footprint: Footprint, temp: int, config: ExecutionConfig) -> bool:
    outputs = plan.draw_block * (plan.row_block * footprint.per_row + footprint.per_draw)
    counted = max(0, temp - config.free_temp_bytes)
    return footprint.alive * outputs + counted <= _budget(footprint, config)


def size_blocks(
    job: BlockJob,
    footprint: Footprint,
    *,
    chains: int,
    batch_size: int | None,
    config: ExecutionConfig,
    cache: dict[Any, Any],
    announce: Announce | None = None,
) -> BlockPlan:
    """Choose block and step shapes so a call's memory stays within the budget.

    With ``footprint.probe`` the block program is lowered (and compiled once)
    at the shape chosen; the run then finds it compiled.

    Args:
        job: The job.
        footprint: What its blocks hold.
        chains: Number of chains of the draws.
        batch_size: Rows per block asked for by the user, or ``None``.
        config: Execution settings.
        cache: Per-model cache of sizing results, keyed by the program and shapes.
        announce: Told what is being compiled, before it is.
    """
    n_rows = max(job.n_rows, 1)
    if footprint.in_one_block:
        step = config.min_cells_per_step
        return BlockPlan(job.n_draws, n_rows, job.n_draws, job.n_rows, step)
    if footprint.whole_draws:
        return _whole_draw_blocks(job, footprint, batch_size, config)
    one_draw = footprint.one_draw_steps
    if not footprint.probe:
        return _plan(job, footprint, chains, batch_size, config, 0.0, bool(one_draw))
    key = (
        job.program,
        job.split_rows,
        job.n_draws,
        job.n_rows,
        chains,
        batch_size,
        footprint,
        config,
        *_input_shapes(job),
    )
    cached = cache.get(key)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    plan = _plan(job, footprint, chains, batch_size, config, 0.0, bool(one_draw))
    lowered = None
    if one_draw is None:

        def vectorised_flops() -> float:  # the vectorised program at this shape, per cell
            nonlocal lowered
            lowered = _lower(job, plan)
            return lowered_flops(lowered) / max(plan.draw_block * plan.row_block, 1)

        one_draw = _matmul_dominated(job, config, vectorised_flops)
        if one_draw:
            plan = _plan(job, footprint, chains, batch_size, config, 0.0, True)
            lowered = None
    if lowered is None:
        lowered = _lower(job, plan)
    if announce is not None:
        announce(f"compiling blocks of {plan.draw_block} draws x {plan.row_block} rows")
    temp = compiled_temp_bytes(lowered)
    if not _fits(plan, footprint, temp, config):
        temp_cell = temp / max(min(plan.step_cells, plan.draw_block * plan.row_block), 1)
        plan = _plan(job, footprint, chains, batch_size, config, temp_cell, one_draw)
    _remember(cache, key, plan)
    return plan


def _matmul_dominated(
    job: BlockJob, config: ExecutionConfig, xla_flops_per_cell: Callable[[], float]
) -> bool:
    """Whether the kernel counts as dominated by matrix products, so runs one draw per step.

    Only on CPU. The count is the job's (from the kernel's probes), else
    ``xla_flops_per_cell()``: XLA's estimate for the lowered block program.
    """
    if jax.default_backend() != "cpu":
        return False
    flops = job.matmul_flops_per_cell
    if flops is None:
        flops = xla_flops_per_cell()
    return flops >= config.matmul_flops_per_cell


def _input_shapes(job: BlockJob) -> tuple[Any, str]:
    """The shapes and dtypes of the job's inputs, as part of a cache key."""
    shapes = jax.tree.map(
        lambda v: (tuple(getattr(v, "shape", ())), str(getattr(v, "dtype", ""))),
        (job.inputs.rows, job.inputs.shared, job.latent),
    )
    return tuple(jax.tree.leaves(shapes)), str(jax.tree.structure(shapes))


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) > 256:
        cache.clear()
    cache[key] = value


#: Draw-by-row cells of a whole-draw block's step, where its compiled temporaries allow:
#: a step's float32 values then take 2 MiB, near a CPU core's cache.
WIDE_STEP_CELLS = 1 << 19


def widen_steps(
    job: BlockJob,
    blocks: BlockPlan,
    footprint: Footprint,
    config: ExecutionConfig,
    cache: dict[Any, Any],
) -> BlockPlan:
    """Steps of many draws when the block compiled with them holds no more than was reserved.

    Blocks of every draw sized with one draw per step (scenario
    comparisons) bound the kernel's own temporaries whatever the kernel. A
    step of many draws runs faster (the kernel's work vectorises over them),
    so the program is compiled with steps of about :data:`WIDE_STEP_CELLS`
    cells and kept when XLA's memory analysis of it stays within what the
    sizing reserved for a block (``footprint.per_row`` bytes per draw and
    row); the run then uses that very program. Kernels dominated by matrix
    products keep one draw per step on CPU, as forward passes do.

    Args:
        job: The job (its program as sized).
        blocks: The plan sized with one draw per step.
        footprint: What its blocks hold.
        config: Execution settings.
        cache: Per-model cache of sizing results.
    """
    rows, draws = blocks.row_block, blocks.draw_block
    per_step = min(draws, WIDE_STEP_CELLS // max(rows, 1))
    if per_step * rows <= blocks.step_cells:
        return blocks
    wide = dataclasses.replace(blocks, step_cells=per_step * rows)
    key = ("wide steps", job.program, job.split_rows, wide, footprint, config, *_input_shapes(job))
    fits = cache.get(key)
    if fits is None:
        lowered = _lower(job, wide)
        heavy = _matmul_dominated(job, config, lambda: lowered_flops(lowered) / wide.step_cells)
        fits = not heavy and compiled_temp_bytes(lowered) <= draws * rows * footprint.per_row
        _remember(cache, key, fits)
    return wide if fits else blocks


def _plan(
    job: BlockJob,
    footprint: Footprint,
    chains: int,
    batch_size: int | None,
    config: ExecutionConfig,
    temp_cell: float,
    one_draw: bool,
) -> BlockPlan:
    """Blocks and steps for a kernel with ``temp_cell`` temporary bytes per cell."""
    budget = _budget(footprint, config)
    alive = footprint.alive
    min_step = config.min_cells_per_step
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
    # one canonical step per behaviour (a step of the whole block or more is one
    # vectorised step), so equal plans share one compiled program
    step = min(step_for(row_block), draw_block * row_block)
    return BlockPlan(draw_block, row_block, blocks.n_draws, blocks.n_rows, step)


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
            max(1, min(n_rows, _budget(footprint, config) // footprint.alive // per_row))
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
    block at a time, so the more rows a step has the better. Such blocks
    keep every row (up to ``max_batch_rows``) and split the draws instead,
    into at least ``min_draw_blocks`` blocks so that the writers have a
    block to write while the next one computes; more blocks than that only
    add the cost of each block. Returns ``None`` when one draw of the rows
    does not fit the budget.
    """
    rows = _even_rows(job.n_rows, config.max_batch_rows)
    step_temp = temp_cell * rows
    budget = _budget(footprint, config)
    room = budget - step_temp
    one_draw = rows * footprint.per_row + footprint.per_draw
    if step_temp > budget // 2 or room < footprint.alive * one_draw:
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
