"""The block runner: every call's (draws x rows) job, block by block, on all devices.

A :class:`BlockJob` pairs a block program (the forward pass, or the scenario
reducer) with the call's inputs. :func:`run_blocks` cuts it into blocks,
slices and pads each block's rows, places them on the devices (split by rows
or by draws), dispatches the compiled, sharded program (JAX dispatch is
asynchronous, so the next block computes while earlier ones are consumed),
trims the padding and hands each block's outputs to a consumer.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from dopax.parallel.batching import BlockPlan, ceil_to
from dopax.parallel.sharded import (
    DRAW,
    OBS,
    BlockInputs,
    BlockProgram,
    OutputAxes,
    compiled_block,
    device_count,
    pad_leading,
    place,
)
from dopax.sampling.prepare import read_rows
from dopax.sampling.row_latent import DRAWS, RowLatentSpec, block_draws, block_params

__all__ = [
    "Block",
    "BlockJob",
    "Consume",
    "JobInputs",
    "Trimmed",
    "compiled_temp_bytes",
    "flat_index",
    "forward_consumer",
    "lower_block",
    "lowered_flops",
    "padded_rows",
    "row_latent_bytes",
    "run_blocks",
    "sharding_of",
    "splits_rows",
]

logger = logging.getLogger("dopax")


@dataclasses.dataclass(frozen=True)
class Block:
    """One block: draws ``d0:d1`` by rows ``r0:r1``."""

    d0: int
    d1: int
    r0: int
    r1: int


#: Called with each block and its outputs (padding trimmed, possibly still computing).
Consume = Callable[[Block, dict[str, Any]], None]


@dataclasses.dataclass(frozen=True)
class JobInputs:
    """A job's block inputs: pytrees laid out as its block program takes them.

    Attributes:
        rows: Full-length row inputs (host, lazy or device arrays).
        row_do: Full-length row intervention values.
        shared: Inputs used whole by every block.
        shared_do: Intervention values used whole.
        anchor: The anchor row's inputs (row 0).
        anchor_do: The anchor row's intervention values.
    """

    rows: Any
    row_do: Any
    shared: Any
    shared_do: Any
    anchor: Any
    anchor_do: Any


@dataclasses.dataclass
class BlockJob:
    """Everything a call's blocks need, ready to run.

    Attributes:
        program: What a block computes.
        call_key: The call's PRNG key.
        latent: Latent values to substitute, leading flat draw axis.
        n_draws: Number of draws (flat, all chains).
        n_rows: Number of rows.
        inputs: The blocks' inputs (sliced by rows, or used whole).
        window_bytes: Largest span of stored per-row draws kept for the next
            block (the call's ``ExecutionConfig.input_window_bytes``).
        split_rows: Whether rows may be split into blocks (else every block
            holds all rows and only draws are split).
        shard_axis: ``"obs"`` or ``"draw"``, as asked.
        row_offset: Global index of the job's first row: random numbers follow
            global row indices, so a caller that splits rows over several jobs
            keeps every row's draws.
        matmul_flops_per_cell: Flops of the program's matrix products per
            draw-row cell, when known from the kernel's probes (``None``: the
            sizing policy reads XLA's cost analysis of the program).
        params: Values of the kernel's ``numpyro.param`` sites, used whole.
        row_latents: Per-row latent sites whose values each block carries
            for its own rows.
        row_sources: Their sources by site: draws ``(draws, *site_shape)``
            (in memory or stored) or a guide's parameters by role.
        row_words: The posterior's row key (two ``uint32`` words) that
            addresses per-row sites drawn from a guide, or ``None``.
    """

    program: BlockProgram
    call_key: jax.Array
    latent: Mapping[str, Any]
    n_draws: int
    n_rows: int
    inputs: JobInputs
    window_bytes: int
    split_rows: bool = True
    shard_axis: str = OBS
    row_offset: int = 0
    matmul_flops_per_cell: float | None = None
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    row_latents: tuple[RowLatentSpec, ...] = ()
    row_sources: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    row_words: Any = None


def row_latent_bytes(job: BlockJob) -> int:
    """Bytes per draw and row of the per-row latent draws a block carries."""
    total = 0
    for spec in job.row_latents:
        if spec.kind != DRAWS:
            continue
        source = job.row_sources[spec.name]
        shape = tuple(np.shape(source))[1:]
        rest = [n for i, n in enumerate(shape) if i != spec.row_axis]
        total += int(np.prod(rest, dtype=np.int64)) * np.dtype(source.dtype).itemsize
    return total


def splits_rows(job: BlockJob, row_block: int) -> bool:
    """Whether blocks of ``row_block`` rows split the job's rows (into blocks or devices)."""
    if not job.split_rows:
        return False
    shard_axis, n_dev = sharding_of(job)
    return row_block < max(job.n_rows, 1) or (shard_axis == OBS and n_dev > 1)


def sharding_of(job: BlockJob) -> tuple[str, int]:
    """Return ``(shard axis, devices)`` a job actually runs with.

    Rows that cannot be split are never split across devices: such jobs
    split draws instead, unless their program reduces over every draw of a
    row (``whole_draws``): those split rows, or run on one device.
    """
    n_dev = device_count()
    if getattr(job.program, "whole_draws", False):
        return OBS, (n_dev if job.split_rows else 1)
    if n_dev == 1:
        return OBS if job.split_rows else DRAW, 1
    return (job.shard_axis if job.split_rows else DRAW), n_dev


class Trimmed:
    """A block's output with its padding still attached, trimmed when read on the host.

    Every consumer reads outputs with :func:`numpy.asarray`; trimming there
    (in a writer thread) rather than on the device saves a small compilation
    per padded shape.

    Args:
        value: The padded output (a device array, possibly still computing).
        index: The slices that keep the real draws and rows.
    """

    def __init__(self, value: Any, index: tuple[slice, ...]) -> None:
        self.value = value
        self.index = index

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        array = np.ascontiguousarray(np.asarray(self.value)[self.index])
        return array if dtype is None else array.astype(dtype, copy=False)


def _host(value: Any) -> Any:
    # ``jnp.asarray`` of a host array compiles a small program per shape; a device
    # put does not.
    return value if isinstance(value, jax.Array) else np.asarray(value)


def _to_device(tree: Any) -> Any:
    return place(jax.tree.map(_host, tree), False)


def _slice(tree: Any, start: int, stop: int, size: int) -> Any:
    return jax.tree.map(lambda v: pad_leading(read_rows(v, start, stop), size), tree)


def padded_rows(rows: int, row_block: int, split_rows: bool, shards: int) -> int:
    """Return the rows a block of ``rows`` rows is padded to.

    When rows may be split, no block and no device's share of one has a
    single row: a kernel may drop the row axis of a one-row batch (e.g. a
    network ending in ``.squeeze()``), so such blocks get a second (padding)
    row. A short last block within an eighth of the block's rows (rounded up
    to 8) of a full one is padded to the full block and reuses its program;
    a shorter one is padded to a multiple of that eighth, so a call compiles
    at most two block shapes and the padding stays within an eighth of a
    block.

    Args:
        rows: Rows in the block.
        row_block: Rows of a full block of the call.
        split_rows: Whether the job splits rows (else rows are never padded).
        shards: Devices the block's rows are split across (1 if not split).
    """
    if not split_rows:
        return rows
    padded = max(rows, 2)
    if rows < row_block:
        unit = ceil_to(-(-row_block // 8), 8)
        padded = max(padded, row_block if rows >= row_block - unit else ceil_to(rows, unit))
    return ceil_to(max(padded, 2 * shards), shards)


class _Runner:
    """The compiled block function of a job and its whole-call arguments."""

    def __init__(
        self, job: BlockJob, program: BlockProgram | None = None, row_block: int = 0
    ) -> None:
        self.job = job
        self.row_block = row_block
        self.shard_axis, self.n_dev = sharding_of(job)
        self.program = program if program is not None else job.program
        self.fn = compiled_block(self.program, self.shard_axis, self.n_dev)
        self.shared = _to_device(job.inputs.shared)
        self.params = _to_device(dict(job.params))
        self.shared_do = _to_device(job.inputs.shared_do)
        self.anchor = _to_device(job.inputs.anchor)
        self.anchor_do = _to_device(job.inputs.anchor_do)
        words = np.zeros(2, np.uint32) if job.row_words is None else job.row_words
        self.row_words = place(np.asarray(words, np.uint32), False)
        self._draw_cache: dict[tuple[int, int], tuple[Any, Any]] = {}

    def padded(self, nd: int, nr: int) -> tuple[int, int]:
        """Return the block's draw and row counts padded for the device split."""
        pad_d = ceil_to(nd, self.n_dev) if self.shard_axis == DRAW else nd
        shards = self.n_dev if self.shard_axis == OBS else 1
        pad_r = padded_rows(nr, self.row_block, self.job.split_rows, shards)
        return pad_d, pad_r

    def _draw_args(self, d0: int, d1: int) -> tuple[Any, Any]:
        """Return the placed draw indices and latent values of draws ``d0:d1``.

        Blocks iterate rows outer and draws inner, and usually hold every draw,
        so the latent values (a network's weights: hundreds of MB) are put on
        the devices once per draw range rather than once per block.
        """
        cached = self._draw_cache.get((d0, d1))
        if cached is None:
            pad_d, _ = self.padded(d1 - d0, 1)
            split_draws = self.shard_axis == DRAW and self.n_dev > 1
            draws = pad_leading(np.arange(d0, d1, dtype=np.int32), pad_d)
            latent = {k: pad_leading(v[d0:d1], pad_d) for k, v in self.job.latent.items()}
            cached = (place(draws, split_draws), place(latent, split_draws))
            if len(self._draw_cache) >= 2:
                self._draw_cache.clear()
            self._draw_cache[(d0, d1)] = cached
        return cached

    def _row_latent(
        self, d0: int, d1: int, r0: int, r1: int, pad_d: int, pad_r: int
    ) -> tuple[Any, Any]:
        """Return the block's per-row latent values and ``(row key, guide parameters)``."""
        values: dict[str, Any] = {}
        params: dict[str, Any] = {}
        rows = slice(r0, r1)
        for spec in self.job.row_latents:
            source = self.job.row_sources[spec.name]
            if spec.kind == DRAWS:
                values[spec.name] = block_draws(
                    source, spec.row_axis, d0, d1, rows, pad_d, pad_r, self.job.window_bytes
                )
            else:
                params[spec.name] = block_params(source, spec.row_axis, rows, pad_r)
        split_rows = self.shard_axis == OBS and self.n_dev > 1
        split_draws = self.shard_axis == DRAW and self.n_dev > 1
        placed = place(values, split_rows or split_draws, 1 if split_rows else 0)
        return placed, (self.row_words, place(params, split_rows))

    def args(self, d0: int, d1: int, r0: int, r1: int) -> BlockInputs:
        """Return the block function's inputs for one block."""
        pad_d, pad_r = self.padded(d1 - d0, r1 - r0)
        draws, latent = self._draw_args(d0, d1)
        split_rows = self.shard_axis == OBS and self.n_dev > 1
        row_latent, row_params = self._row_latent(d0, d1, r0, r1, pad_d, pad_r)
        return BlockInputs(
            call_key=self.job.call_key,
            draws=draws,
            row_offset=np.uint32(r0 + self.job.row_offset),
            latent=latent,
            params=self.params,
            rows=place(_slice(self.job.inputs.rows, r0, r1, pad_r), split_rows),
            shared=self.shared,
            row_do=place(_slice(self.job.inputs.row_do, r0, r1, pad_r), split_rows),
            shared_do=self.shared_do,
            anchor=self.anchor,
            anchor_do=self.anchor_do,
            row_latent=row_latent,
            row_params=row_params,
        )


def lower_block(
    job: BlockJob, program: BlockProgram, draws: int, rows: int, row_block: int = 0
) -> Any:
    """Return ``program`` lowered for one block of ``draws x rows`` (a ``jax.stages.Lowered``).

    It is lowered with the arguments of the job's first block, exactly as
    :func:`run_blocks` passes them, so compiling it compiles the program the
    run uses (JAX keeps it), and each block shape is compiled once.

    Args:
        job: The job.
        program: The program to lower (the job's, with a step size).
        draws: Draws in the block.
        rows: Rows in the block.
        row_block: Rows of a full block of the call (padding of short blocks).
    """
    runner = _Runner(job, program, row_block)
    args = runner.args(0, min(draws, job.n_draws), 0, min(rows, max(job.n_rows, 1)))
    return runner.fn.lower(args)


def lowered_flops(lowered: Any) -> float:
    """Return XLA's flop count of a lowered block program (no compilation).

    Loop bodies count once, so this is the flops of one step of draws.

    Args:
        lowered: A ``jax.stages.Lowered``.
    """
    try:
        cost = lowered.cost_analysis()
        if isinstance(cost, list | tuple):  # older JAX: one dict per program
            cost = cost[0] if cost else {}
        return float((cost or {}).get("flops", 0.0))
    except Exception:  # pragma: no cover - backends without cost analysis
        return 0.0


def compiled_temp_bytes(lowered: Any) -> int:
    """Compile a lowered block program and return XLA's temporary bytes for it.

    The compiled executable stays in JAX's cache, so the run that follows
    does not compile it again.

    Args:
        lowered: A ``jax.stages.Lowered``.
    """
    stats = lowered.compile().memory_analysis()
    if stats is None:  # pragma: no cover - backends without memory analysis
        return 0
    return int(stats.temp_size_in_bytes)


def run_blocks(
    job: BlockJob,
    blocks: BlockPlan,
    consume: Consume,
    *,
    on_block: Callable[[int, int], None] | None = None,
    select: Sequence[tuple[int, int, int, int]] | None = None,
) -> None:
    """Run every block of ``job`` and pass each block's outputs to ``consume``.

    Each output is taken out of the program's result as it is trimmed, and
    the runner keeps no reference once ``consume`` returns, so the loop never
    holds a block alive while the consumer's writers catch up.

    Args:
        job: The job.
        blocks: How to cut it into blocks.
        consume: Called as ``consume(block, outputs)``.
        on_block: Called with ``(rows_in_block, draws_in_block)`` after each
            block is dispatched (for progress bars).
        select: Run only these blocks of ``blocks`` (a task's share on a cluster).
    """
    runner = _Runner(job, row_block=blocks.row_block)
    axes = runner.program.outputs
    for d0, d1, r0, r1 in blocks.blocks() if select is None else select:
        nd, nr = d1 - d0, r1 - r0
        pad_d, pad_r = runner.padded(nd, nr)
        raw = runner.fn(runner.args(d0, d1, r0, r1))
        out: dict[str, Any] = {}
        for ax in axes:
            value = raw.pop(ax.name)
            index = [slice(None)] * value.ndim
            if pad_d != nd and ax.draw_axis is not None:
                index[ax.draw_axis] = slice(0, nd)
            if pad_r != nr and ax.row_axis is not None and not ax.summed_over_rows:
                index[ax.row_axis] = slice(0, nr)
            trimmed = any(sl != slice(None) for sl in index)
            out[ax.name] = Trimmed(value, tuple(index)) if trimmed else value
            del value
        del raw
        consume(Block(d0, d1, r0, r1), out)
        del out
        if on_block is not None:
            on_block(nr, nd)


def flat_index(axes: OutputAxes, block: Block) -> tuple[slice, ...] | None:
    """Return where a forward output block goes in its site's flat ``(draws, *shape)`` layout.

    Sites without rows are written by the blocks of the first rows only (``None``
    for the others).

    Args:
        axes: The output's axes (draws first).
        block: The block.
    """
    if axes.row_axis is None:
        return (slice(block.d0, block.d1),) if block.r0 == 0 else None
    return tuple(
        slice(block.d0, block.d1)
        if axis == 0
        else slice(block.r0, block.r1)
        if axis == axes.row_axis
        else slice(None)
        for axis in range(axes.row_axis + 1)
    )


def forward_consumer(
    axes: Sequence[OutputAxes],
    group: str,
    submit: Callable[[str, str, tuple[slice, ...], Any], None],
) -> Consume:
    """Return a consumer that hands every forward output block to ``submit`` with its index.

    Each output is taken out of the block's outputs as it is handed over.

    Args:
        axes: The program's outputs.
        group: The result group of the outputs.
        submit: Called as ``submit(group, name, index, value)``.
    """

    def consume(block: Block, outputs: dict[str, Any]) -> None:
        for ax in axes:
            value = outputs.pop(ax.name)
            index = flat_index(ax, block)
            if index is not None:
                submit(group, ax.name, index, value)
            del value

    return consume
