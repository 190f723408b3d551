"""JAX's persistent compilation cache, switched on by ``ExecutionConfig.compilation_cache_dir``.

With a cache folder, every program JAX compiles in the process (dopax's block
programs, the fit's steps, and the user's own) is written there and read back
by later processes, so a second process starts warm.
JAX writes only programs that took at least
``jax_persistent_cache_min_compile_time_secs`` (1 s by default) to compile;
dopax's programs mostly compile faster, so the threshold is set to 0 with the
folder. Both are process-wide JAX settings: setting the folder back to ``None``
stops using the cache, and the threshold returns to its previous value.
"""

from __future__ import annotations

import os
import threading

import jax

__all__ = ["use_compilation_cache"]

_THRESHOLD = "jax_persistent_cache_min_compile_time_secs"
_lock = threading.Lock()
_in_use: str | None = None
_threshold: float | None = None


def use_compilation_cache(path: str | None) -> None:
    """Make JAX's persistent compilation cache use ``path`` (``None``: no cache).

    Does nothing when ``path`` is the folder already in use.

    Args:
        path: The cache folder (created if missing), or ``None``.
    """
    global _in_use, _threshold
    from jax.experimental.compilation_cache import compilation_cache

    if path is not None:
        path = os.path.abspath(os.path.expanduser(str(path)))
    with _lock:
        if path == _in_use:
            return
        if path is None:
            jax.config.update("jax_compilation_cache_dir", None)
            if _threshold is not None:
                jax.config.update(_THRESHOLD, _threshold)
        else:
            os.makedirs(path, exist_ok=True)
            if _in_use is None:
                _threshold = float(jax.config.values[_THRESHOLD])
            jax.config.update("jax_compilation_cache_dir", path)
            jax.config.update(_THRESHOLD, 0.0)
        # JAX decides once per process whether to use the cache; ask it again
        compilation_cache.reset_cache()
        _in_use = path
