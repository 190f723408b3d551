"""Batch planning: chunk shapes from a memory budget. Pure arithmetic."""

from __future__ import annotations

import dataclasses
import math

__all__ = ["BlockPlan", "plan_blocks"]


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """How a (draws x rows) job is cut into blocks.

    Attributes:
        draw_block: Draws per block; divides the draws per chain.
        row_block: Rows per block (all rows on the draw-axis path).
        n_draws: Total draws (all chains).
        n_rows: Total rows.
        step_cells: Draw-by-row cells computed per sequential step inside a
            block (see :func:`dopax.sampling.forward.forward_block`); a block
            of at most this many cells runs in one vectorised step.
    """

    draw_block: int
    row_block: int
    n_draws: int
    n_rows: int
    step_cells: int = 1 << 12

    def blocks(self) -> list[tuple[int, int, int, int]]:
        """Return ``(draw_start, draw_stop, row_start, row_stop)`` for every block, rows outer."""
        out = []
        for r0 in range(0, max(self.n_rows, 1), self.row_block):
            for d0 in range(0, self.n_draws, self.draw_block):
                out.append(
                    (
                        d0,
                        min(d0 + self.draw_block, self.n_draws),
                        r0,
                        min(r0 + self.row_block, self.n_rows),
                    )
                )
        return out


def largest_divisor_at_most(n: int, limit: int) -> int:
    """Return the largest divisor of ``n`` that is at most ``limit`` (at least 1)."""
    limit = max(1, min(n, limit))
    for d in range(limit, 0, -1):
        if n % d == 0:
            return d
    return 1


def plan_blocks(
    *,
    n_draws: int,
    draws_per_chain: int,
    n_rows: int,
    bytes_per_draw_row: int,
    bytes_per_draw: int,
    budget: int,
    batch_size: int | None,
    split_rows: bool,
    min_rows: int = 1,
    max_rows: int = 1_000_000,
) -> BlockPlan:
    """Choose block shapes that keep one block of outputs within ``budget`` bytes.

    Args:
        n_draws: Total draws.
        draws_per_chain: Draws per chain (blocks never straddle chains).
        n_rows: Total rows.
        bytes_per_draw_row: Output bytes of one draw of one row (all sites).
        bytes_per_draw: Output bytes of one draw of the sites without rows.
        budget: Target bytes of one block of outputs.
        batch_size: Rows per block asked for by the user, or ``None``.
        split_rows: Whether rows may be split (``False`` on the draw-axis path).
        min_rows: Least rows per automatic block.
        max_rows: Most rows per automatic block.
    """
    n_rows_eff = max(n_rows, 1)
    if not split_rows:
        per_draw = bytes_per_draw_row * n_rows_eff + bytes_per_draw
        draw_block = largest_divisor_at_most(draws_per_chain, budget // max(per_draw, 1))
        return BlockPlan(draw_block, n_rows_eff, n_draws, n_rows)
    if batch_size is not None:
        row_block = min(batch_size, n_rows_eff)
        per_draw = bytes_per_draw_row * row_block + bytes_per_draw
        draw_block = largest_divisor_at_most(draws_per_chain, budget // max(per_draw, 1))
        return BlockPlan(draw_block, row_block, n_draws, n_rows)
    # all draws of a chain per block when that leaves a sensible number of rows
    draw_block = draws_per_chain
    rows = budget // max(bytes_per_draw_row * draw_block, 1)
    if rows < min(256, n_rows_eff):
        draw_block = largest_divisor_at_most(
            draws_per_chain, budget // max(bytes_per_draw_row * min(256, n_rows_eff), 1)
        )
        rows = budget // max(bytes_per_draw_row * draw_block, 1)
    row_block = int(min(max(rows, min_rows, 1), max_rows, n_rows_eff))
    return BlockPlan(draw_block, row_block, n_draws, n_rows)


def ceil_to(n: int, multiple: int) -> int:
    """Round ``n`` up to a multiple of ``multiple``.

    Args:
        n: The number.
        multiple: The multiple.
    """
    return int(math.ceil(n / multiple) * multiple)
