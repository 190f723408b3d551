"""Tracing kernels from many threads: one lock around NumPyro's process-wide handler stack.

NumPyro keeps its effect handlers (``seed``, ``trace``, ``substitute`` ...)
on one module-level stack. Two threads running a kernel under handlers at
the same time push onto the same stack, so each sees the other's sites
(``all sites must have unique names``). Running a kernel in Python happens
only while JAX *traces* a program (or while a probe or a guide runs
eagerly); a compiled program never touches the stack. So dopax serialises
exactly that: every trace of a kernel holds :data:`TRACE_LOCK`, and a
compiled function takes it only for calls with an argument signature it has
not run before (the calls that trace). Compiled block runs of many threads
go on at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import jax

__all__ = ["TRACE_LOCK", "GuardedJit", "guarded_jit"]

#: Held while a kernel runs under NumPyro's handlers in Python (re-entrant).
TRACE_LOCK = threading.RLock()


def _signature(args: Any, kwargs: Any) -> Any:
    """What decides whether a jitted call traces: tree structure, shapes, dtypes, placement."""
    leaves, treedef = jax.tree.flatten((args, kwargs))
    return (
        treedef,
        tuple(
            (
                type(leaf),
                getattr(leaf, "shape", None),
                str(getattr(leaf, "dtype", "")),
                bool(getattr(leaf, "weak_type", False)),
                getattr(leaf, "sharding", None) if isinstance(leaf, jax.Array) else None,
            )
            if hasattr(leaf, "shape")
            else (type(leaf), leaf)
            for leaf in leaves
        ),
    )


class GuardedJit:
    """A jitted function whose tracing calls hold :data:`TRACE_LOCK`.

    A call whose argument signature (tree structure, shapes, dtypes, weak
    types, shardings) was seen before runs the compiled program without the
    lock; any other call, and :meth:`lower`, hold it.

    Args:
        fn: The function to jit.
        **jit_kwargs: Passed to :func:`jax.jit`.
    """

    def __init__(self, fn: Callable[..., Any], **jit_kwargs: Any) -> None:
        self.jitted = jax.jit(fn, **jit_kwargs)
        self._seen: set[Any] = set()
        static = jit_kwargs.get("static_argnums", ())
        self._static = (static,) if isinstance(static, int) else tuple(static or ())

    def _key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        static = tuple(args[i] for i in self._static if i < len(args))
        dynamic = tuple(a for i, a in enumerate(args) if i not in self._static)
        return static, _signature(dynamic, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the jitted function, holding the lock when the call may trace."""
        try:
            key = self._key(args, kwargs)
            seen = key in self._seen
        except TypeError:  # an unhashable static value: always guard
            key, seen = None, False
        if seen:
            return self.jitted(*args, **kwargs)
        with TRACE_LOCK:
            out = self.jitted(*args, **kwargs)
        if key is not None:
            self._seen.add(key)
        return out

    def lower(self, *args: Any, **kwargs: Any) -> Any:
        """Lower the function for these arguments (tracing it under the lock)."""
        with TRACE_LOCK:
            return self.jitted.lower(*args, **kwargs)


def guarded_jit(fn: Callable[..., Any], **jit_kwargs: Any) -> GuardedJit:
    """Return ``jax.jit(fn, **jit_kwargs)`` whose tracing calls hold :data:`TRACE_LOCK`.

    Args:
        fn: The function to jit.
        **jit_kwargs: Passed to :func:`jax.jit`.
    """
    return GuardedJit(fn, **jit_kwargs)
