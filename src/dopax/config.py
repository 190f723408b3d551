"""Execution settings for streamed calls, gathered in one documented object.

These tune *how* work runs (memory budget, pipeline depth, codecs), never *what*
is computed: results are identical whatever the settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["ExecutionConfig", "get_config", "set_config", "config_context"]

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
            it, so peak memory does not depend on the data size.
        pipeline_depth: Number of computed chunks that may wait for the writers.
            One is enough to keep two writers busy while the next chunk
            computes (W1 ran as fast with 1 as with 2, in one chunk less
            memory); more absorbs longer stalls of the disk.
        writer_threads: Threads that compress and write chunks to Zarr.
        compressor: ``"auto"`` (floating-point variables uncompressed, all
            others ``"bitshuffle-lz4"``), ``"zstd"``, ``"lz4"`` (Blosc LZ4
            after a byte shuffle; ``"blosc-lz4"`` is the same),
            ``"bitshuffle-lz4"`` (Blosc LZ4 after a bit shuffle) or ``None``
            (no compression). Measured in ``BENCHMARKS.md``.
        compression_level: Codec level where the codec takes one.
        min_batch_rows: Lower bound for the automatic ``batch_size``.
        max_batch_rows: Upper bound for the automatic ``batch_size``.
        trim_memory: Keep resident memory flat over long calls (glibc
            only): from the first streamed call on, allocations of 4 MiB or
            more get their own memory mappings, process-wide, so freed chunk
            buffers go straight back to the operating system; freed heap
            memory is also returned at the end of each call.
        direct_io: Write chunk files with ``O_DIRECT`` (Linux), bypassing the
            page cache, which costs far less CPU per byte on virtual machines
            (``BENCHMARKS.md``). Filesystems that refuse it fall back to
            ordinary writes automatically.
    """

    memory_budget_bytes: int = 256 * 2**20
    pipeline_depth: int = 1
    writer_threads: int = 2
    compressor: str | None = "auto"
    compression_level: int = 1
    min_batch_rows: int = 1
    max_batch_rows: int = 1_000_000
    trim_memory: bool = True
    direct_io: bool = True

    def __post_init__(self) -> None:
        if self.memory_budget_bytes <= 0:
            raise ValueError("`memory_budget_bytes` must be positive.")
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


_CONFIG = ExecutionConfig()


def get_config() -> ExecutionConfig:
    """Return the settings in force."""
    return _CONFIG


def set_config(**changes: Any) -> ExecutionConfig:
    """Replace some settings globally and return the new settings.

    Args:
        **changes: Fields of :class:`ExecutionConfig` to change.
    """
    global _CONFIG
    _CONFIG = dataclasses.replace(_CONFIG, **changes)
    return _CONFIG


@contextmanager
def config_context(**changes: Any) -> Iterator[ExecutionConfig]:
    """Change settings inside a ``with`` block only.

    Args:
        **changes: Fields of :class:`ExecutionConfig` to change.
    """
    global _CONFIG
    old = _CONFIG
    _CONFIG = dataclasses.replace(old, **changes)
    try:
        yield _CONFIG
    finally:
        _CONFIG = old
