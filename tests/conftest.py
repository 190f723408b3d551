"""Settings for every test process: one persistent JAX compilation cache.

Many tests compile the same small programs (the same kernels at the same
shapes, in this process, in the other test workers and in the subprocesses
the tests start). JAX's persistent cache lets each program compile once per
run; every process started from here inherits the folder through the
environment. A cached program is the same executable, so results do not
change. Tests that count compilations turn the cache off for themselves.
"""

from __future__ import annotations

import os
from pathlib import Path

_CACHE = Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax-compilation"

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
