"""Execution settings for streamed calls, gathered in one documented object.

These tune *how* work runs (memory budget, pipeline depth, codecs), never *what*
is computed: results are identical whatever the settings. A call takes the
settings in force when it starts and keeps them to its end.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

from dopax._warn import warn

__all__ = ["ExecutionConfig", "get_config", "set_config", "config_context"]

#: Default budget of calls that stream draws (``memory_budget_bytes=None``).
STREAM_BUDGET_BYTES = 128 * 2**20
#: Default budget of scenario comparisons (``memory_budget_bytes=None``).
SCENARIO_BUDGET_BYTES = 256 * 2**20

#: Accepted values of :attr:`ExecutionConfig.compressor`.
COMPRESSORS = (None, "auto", "zstd", "lz4", "blosc-lz4", "bitshuffle-lz4")


@dataclasses.dataclass(frozen=True)
class ExecutionConfig:
    """Settings that tune streamed execution.

    Attributes:
        memory_budget_bytes: Target bytes of memory a streamed call holds at
            once on top of the model: every chunk of outputs in flight
            (``pipeline_depth + writer_threads + 1`` chunks: queued, being
            written, being computed) plus the kernel's temporaries for the
            chunk being computed. The automatic ``batch_size`` is derived from
            it, so peak memory does not depend on the data size. ``None`` (the
            default) picks per kind of call (:meth:`budget_bytes`): 128 MiB
            for calls that stream draws (``predict``, ``log_likelihood``,
            ``sample_prior_predictive``, scoring) and 256 MiB for
            ``compare_scenarios``. An integer applies to every call. A
            forward pass gains nothing from blocks larger than 128 MiB, while
            scenario blocks, which hold every draw of their rows, run faster
            with more rows (``BENCHMARKS.md`` has the measurements).
        pipeline_depth: Number of computed chunks that may wait for the writers.
            One is enough to keep two writers busy while the next chunk
            computes, in one chunk less memory than two; more absorbs longer
            stalls of the disk.
        writer_threads: Threads that compress and write chunks to Zarr.
        compressor: ``"auto"`` (floating-point variables uncompressed, all
            others ``"bitshuffle-lz4"``), ``"zstd"``, ``"lz4"`` (Blosc LZ4
            after a byte shuffle; ``"blosc-lz4"`` is the same),
            ``"bitshuffle-lz4"`` (Blosc LZ4 after a bit shuffle) or ``None``
            (no compression).
        compression_level: Codec level where the codec takes one.
        min_batch_rows: Lower bound for the automatic ``batch_size``.
        max_batch_rows: Upper bound for the automatic ``batch_size``.
        trim_memory: Keep resident memory flat over long calls (glibc
            only): from the first streamed call on, allocations of
            ``mmap_threshold_bytes`` or more get their own memory mappings,
            process-wide, so freed chunk
            buffers go straight back to the operating system; freed heap
            memory is also returned at the end of each call.
        direct_io: Write chunk files with ``O_DIRECT`` (Linux), bypassing the
            page cache, which costs far less CPU per byte on virtual machines.
            Filesystems that refuse it fall back to
            ordinary writes automatically.
        min_cells_per_step: Fewest draw-by-row cells computed per sequential
            step inside a block (steps bound the kernel's temporaries; the
            sizing policy raises this from XLA's memory analysis).
        free_temp_bytes: Temporaries of a compiled block up to this many
            bytes are not counted against ``memory_budget_bytes`` (buffers
            of a fixed size, such as one step's latent values); beyond it
            they are, and blocks shrink to make room.
        matmul_flops_per_cell: Flops of a kernel's matrix products per
            draw-row cell (counted in its traced program; XLA's estimate of
            the whole block program where no count is known) above which the
            kernel counts as dominated by matrix products and runs one draw
            per step on CPU (a linear predictor with noise: tens of flops; a
            small neural network: tens of thousands).
        min_draw_blocks: Fewest blocks the draws are split into when blocks
            keep whole rows (one-draw steps), so writers overlap compute.
        row_multiple: Automatic scenario blocks hold a multiple of this many
            rows: XLA's CPU code can run at half speed on an odd row count.
        host_threads: Deprecated, with no effect (``compare_scenarios``
            takes its per-row summaries inside the block program): setting
            it warns (``FutureWarning``), so that settings naming it still
            apply while they are updated.
        static_chunk_bytes: Largest chunk of a variable written whole at open
            (the posterior); chunks split the draws. The copy runs beside the
            blocks, outside ``memory_budget_bytes``, a chunk and its encoded
            bytes at a time: 16 MiB keeps a ``predict`` whose posterior holds
            a per-row latent site within about 4% of its default budget,
            where 64 MiB chunks took it 46% over
            (``benchmarks/micro.py copy``).
        coord_chunk: Elements per chunk of a stored dimension coordinate.
        lock_stripes: Locks that serialise partial-chunk writes of
            concurrent writers (chunks hash onto them).
        trim_every_bytes: With ``trim_memory``, freed heap memory is returned
            to the system after every this many bytes of blocks written.
        mmap_threshold_bytes: With ``trim_memory``, allocations of at least
            this size get their own memory mappings (glibc's
            ``M_MMAP_THRESHOLD``), fixed once per process at the first call.
        input_window_bytes: Bytes of a chunked input (Zarr, HDF5, dask) read
            at once and kept for the next block, so each source chunk is
            decompressed once even when blocks are smaller than chunks.
        direct_io_piece_bytes: Size of the aligned buffer through which
            ``O_DIRECT`` writes pass.
        svi_steps_per_chunk: SVI steps run in one compiled ``scan`` between
            progress updates and convergence checks.
        compilation_cache_dir: A folder for JAX's persistent compilation
            cache, or ``None`` (the default: no cache). With a folder, the
            programs a call compiles are saved there and a later process
            loads them instead of compiling, so its first call starts warm.
            This is a process-wide JAX setting,
            so the user's own compiled functions are cached there too, and
            every program is cached however quickly it compiled. Only use a
            folder that no untrusted user can write to. A common choice is
            ``~/.cache/dopax/jax``.
        client: A ``dask.distributed.Client``: streamed calls then run their
            blocks as tasks on its cluster (a call's own ``client=`` argument
            takes precedence). Results are bit-identical to a local run.
    """

    memory_budget_bytes: int | None = None
    pipeline_depth: int = 1
    writer_threads: int = 2
    compressor: str | None = "auto"
    compression_level: int = 1
    min_batch_rows: int = 1
    max_batch_rows: int = 1_000_000
    trim_memory: bool = True
    direct_io: bool = True
    min_cells_per_step: int = 1 << 12
    free_temp_bytes: int = 8 * 2**20
    matmul_flops_per_cell: float = 2_000.0
    min_draw_blocks: int = 2
    row_multiple: int = 8
    host_threads: int | None = None
    static_chunk_bytes: int = 16 * 2**20
    coord_chunk: int = 1 << 20
    lock_stripes: int = 64
    trim_every_bytes: int = 1 << 30
    mmap_threshold_bytes: int = 1 << 20
    input_window_bytes: int = 64 << 20
    direct_io_piece_bytes: int = 8 * 2**20
    svi_steps_per_chunk: int = 100
    compilation_cache_dir: str | None = None
    client: Any = None

    def __post_init__(self) -> None:
        if self.pipeline_depth < 1:
            raise ValueError("`pipeline_depth` must be at least 1.")
        if self.writer_threads < 1:
            raise ValueError("`writer_threads` must be at least 1.")
        if self.compressor not in COMPRESSORS:
            raise ValueError(
                f"`compressor` must be one of {', '.join(map(repr, COMPRESSORS))}; "
                f"got {self.compressor!r}."
            )
        if not 1 <= self.min_batch_rows <= self.max_batch_rows:
            raise ValueError("Need 1 <= `min_batch_rows` <= `max_batch_rows`.")
        positive = (
            "min_cells_per_step",
            "free_temp_bytes",
            "min_draw_blocks",
            "row_multiple",
            "static_chunk_bytes",
            "coord_chunk",
            "lock_stripes",
            "trim_every_bytes",
            "mmap_threshold_bytes",
            "input_window_bytes",
            "svi_steps_per_chunk",
        )
        if self.host_threads is not None:
            warn(
                "`host_threads` has no effect (scenario comparisons summarise their "
                "rows inside the compiled block program) and will be removed; "
                "drop it from your settings.",
                FutureWarning,
                # the line that made the settings: past dataclasses.replace
                # and the __init__ that dataclasses writes (file "<string>")
                skip_files=(dataclasses.__file__, contextlib.__file__, "<string>"),
            )
        # None: `memory_budget_bytes` takes a default per kind of call, `host_threads` is unset
        optional = ("memory_budget_bytes", "host_threads")
        for name in optional + positive:
            value = getattr(self, name)
            if value is None and name in optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                also = " or None" if name in optional else ""
                raise ValueError(f"`{name}` must be a positive integer{also}; got {value!r}.")
        if self.matmul_flops_per_cell <= 0:
            raise ValueError("`matmul_flops_per_cell` must be positive.")
        if self.direct_io_piece_bytes < 4096 or self.direct_io_piece_bytes % 4096:
            raise ValueError("`direct_io_piece_bytes` must be a positive multiple of 4096.")

    def budget_bytes(self, scenarios: bool = False) -> int:
        """The memory budget of a call: ``memory_budget_bytes``, or the default for its kind.

        Args:
            scenarios: The call is a scenario comparison (its blocks hold every
                draw of their rows).

        Returns:
            The budget in bytes.
        """
        if self.memory_budget_bytes is not None:
            return self.memory_budget_bytes
        return SCENARIO_BUDGET_BYTES if scenarios else STREAM_BUDGET_BYTES


_CONFIG = ExecutionConfig()


def get_config() -> ExecutionConfig:
    """Return the settings in force."""
    return _CONFIG


def set_config(**changes: Any) -> ExecutionConfig:
    """Replace some settings globally and return the new settings.

    Args:
        **changes: Fields of :class:`ExecutionConfig` to change.

    Returns:
        The settings now in force.
    """
    global _CONFIG
    _CONFIG = dataclasses.replace(_CONFIG, **changes)
    return _CONFIG


@contextlib.contextmanager
def config_context(**changes: Any) -> Iterator[ExecutionConfig]:
    """Change settings inside a ``with`` block only.

    Args:
        **changes: Fields of :class:`ExecutionConfig` to change.

    Yields:
        The settings in force inside the block.
    """
    global _CONFIG
    old = _CONFIG
    _CONFIG = dataclasses.replace(old, **changes)
    try:
        yield _CONFIG
    finally:
        _CONFIG = old
