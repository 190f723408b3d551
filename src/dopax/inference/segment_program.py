"""The compiled program that runs one segment of MCMC iterations, and its host side.

One jitted loop (``jax.pmap`` for parallel chains) runs up to
``draws_per_chunk`` iterations of the kernel's own ``sample`` function from a
given state, recording each iteration's draws and statistics into buffers of
``draws_per_chunk`` entries; the number of iterations is an argument, so a
single compilation serves every segment, short ones included.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from numpyro.infer import HMC

from dopax.inference.trace_layout import POSTERIOR, SAMPLE_STATS, UNCONSTRAINED_POSTERIOR

__all__ = [
    "PARALLEL",
    "SEQUENTIAL",
    "VECTORIZED",
    "SegmentProgram",
    "host_leaves",
    "is_key",
    "leaf_paths",
    "next_length",
    "unbatch",
]

SEQUENTIAL = "sequential"
VECTORIZED = "vectorized"
PARALLEL = "parallel"


def is_key(leaf: Any) -> bool:
    """Whether ``leaf`` is a typed PRNG key array."""
    return isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def host_leaves(state: Any) -> list[np.ndarray]:
    """The state's leaves as NumPy arrays (key leaves as key data)."""
    return [
        np.asarray(jax.random.key_data(leaf) if is_key(leaf) else leaf)
        for leaf in jax.tree.leaves(state)
    ]


def leaf_paths(state: Any) -> list[str]:
    """The key path of every leaf of ``state``, as text."""
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    return [jax.tree_util.keystr(path) for path, _ in flat]


def unbatch(tree: Any) -> Any:
    """The first chain of a batched state (arrays or shapes)."""
    return jax.tree.map(
        lambda x: x[0] if isinstance(x, jax.Array) else jax.ShapeDtypeStruct(x.shape[1:], x.dtype),
        tree,
    )


class SegmentProgram:
    """The compiled segment function of one run and the host-side reshaping of its output."""

    def __init__(
        self,
        sampler: HMC,
        kwargs: Mapping[str, Any],
        execution: str,
        draws_per_chunk: int,
        include_transformed: bool,
        latent: tuple[str, ...],
    ) -> None:
        self.execution = execution
        self.dpc = draws_per_chunk
        postprocess = sampler.postprocess_fn((), kwargs)
        if execution == VECTORIZED:
            postprocess = jax.vmap(postprocess)
        nuts_kwargs = dict(kwargs)

        def record(state: Any) -> dict[str, dict[str, Any]]:
            constrained = postprocess(state.z)
            stats = {
                "diverging": state.diverging,
                "energy": state.energy,
                "lp": -state.potential_energy,
                "n_steps": state.num_steps,
                "acceptance_rate": state.accept_prob,
                "step_size": state.adapt_state.step_size,
            }
            out = {
                POSTERIOR: {name: constrained[name] for name in latent},
                SAMPLE_STATS: {k: v for k, v in stats.items() if v is not None},
            }
            if include_transformed:
                out[UNCONSTRAINED_POSTERIOR] = dict(state.z)
            return out

        self.record = record

        def segment(state: Any, n: jax.Array) -> tuple[Any, Any]:
            shapes = jax.eval_shape(record, state)
            buffers = jax.tree.map(
                lambda s: jnp.zeros((draws_per_chunk, *s.shape), s.dtype), shapes
            )

            def body(i: jax.Array, carry: tuple[Any, Any]) -> tuple[Any, Any]:
                st, buf = carry
                st = sampler.sample(st, (), nuts_kwargs)
                values = record(st)
                buf = jax.tree.map(
                    lambda b, v: lax.dynamic_update_index_in_dim(b, v, i, 0), buf, values
                )
                return st, buf

            return lax.fori_loop(0, n, body, (state, buffers))

        self.fn: Callable[[Any, Any], tuple[Any, Any]]
        if execution == PARALLEL:
            self.fn = jax.pmap(segment, in_axes=(0, None))
        else:
            self.fn = jax.jit(segment)

    def host_records(self, buffers: Any, n: int) -> dict[str, dict[str, np.ndarray]]:
        """The segment's records as ``(chains, n, ...)`` NumPy arrays."""

        def convert(buf: Any) -> np.ndarray:
            arr = np.asarray(buf)
            if self.execution == VECTORIZED:
                return np.swapaxes(arr[:n], 0, 1)
            if self.execution == PARALLEL:
                return arr[:, :n]
            return arr[None, :n]

        return jax.tree.map(convert, buffers)

    def host_state(self, state: Any) -> list[np.ndarray]:
        """The state's leaves as ``(chains, ...)`` NumPy arrays."""
        leaves = host_leaves(state)
        if self.execution in (VECTORIZED, PARALLEL):
            return leaves
        return [leaf[None] for leaf in leaves]


def _next_length(position: int, num_warmup: int, total: int, dpc: int) -> int:
    """Length of the segment from ``position``: up to the next chunk edge or phase end."""
    if position < num_warmup:
        return min(dpc - position % dpc, num_warmup - position)
    offset = position - num_warmup
    return min(dpc - offset % dpc, total - position)


def next_length(position: int, num_warmup: int, total: int, dpc: int) -> int:
    """Length of the segment from ``position``: up to the next chunk edge or phase end."""
    if position < num_warmup:
        return min(dpc - position % dpc, num_warmup - position)
    offset = position - num_warmup
    return min(dpc - offset % dpc, total - position)
