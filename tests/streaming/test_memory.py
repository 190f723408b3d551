"""Resident memory after freeing chunk-sized buffers (glibc's allocator)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

_PROBE = textwrap.dedent(
    """
    import sys
    import numpy as np
    from dopax.streaming.memory import map_large_allocations

    def rss_mib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    if sys.argv[1] == "mapped":
        assert map_large_allocations(1 << 20)
    # A freed 30 MiB mapping raises glibc's dynamic mmap threshold to 30 MiB, so
    # later 16 MiB buffers come from the heap unless the threshold is fixed.
    big = np.ones(30 * 2**18, dtype=np.float32)
    del big
    before = rss_mib()
    held = [np.ones(16 * 2**18, dtype=np.float32) for _ in range(8)]  # 128 MiB
    del held[:-1]  # free all but the newest (which pins the top of the heap)
    print(rss_mib() - before)
    """
)


def _extra_mib(mode: str) -> float:
    # glibc's own tunables in the environment (dask.distributed sets
    # MALLOC_TRIM_THRESHOLD_ for its workers) would change what is measured.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True, env=env
    )
    return float(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator")
def test_freed_chunk_buffers_leave_resident_memory() -> None:
    # Heap-allocated buffers stay resident after free; mapped ones do not.
    assert _extra_mib("heap") > 100
    assert _extra_mib("mapped") < 40
