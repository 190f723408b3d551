"""Segmented MCMC: runs an HMC/NUTS sampler in segments and streams it to a trace.

:func:`run_to_trace` drives a private copy of the user's kernel with the
kernel's own ``init`` and ``sample`` functions: a compiled loop runs one
segment of ``draws_per_chunk`` iterations, and the driver writes each segment to a
:class:`~dopax.inference.trace.ZarrTrace` before the marker moves. Each chain
starts from the key :meth:`numpyro.infer.MCMC.run` would give it, and every
iteration runs the same computation as there, so the draws equal those of
``MCMC.run`` for the same key (checked bit for bit on CPU in the tests), and a
resumed run equals an uninterrupted one whatever the segment length. The
kernel's ``init`` builds the warm-up schedule from ``num_warmup``; where a chain
is in it (the iteration counter, the adaptation windows, the step size and
mass matrix being adapted) is part of the sampler state, so a resumed run
continues warm-up mid-way.

Chains run as the user's :class:`~numpyro.infer.MCMC` says, and as
``MCMC.run`` runs them: ``"sequential"`` chains take turns segment by segment
(so all chains advance together and an interrupted trace holds about as many
draws of each); ``"vectorized"`` chains run as one batched program;
``"parallel"`` chains are initialised and run on one device each
(``jax.pmap``) when there are enough devices, and otherwise as
``"sequential"`` (NumPyro itself switches at construction). The three give
different floating-point results, so a trace resumes only with the chain
method it ran with (after that switch).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import HMC, MCMC

from dopax.exceptions import TraceMismatchError
from dopax.inference.fingerprint import fingerprint as fingerprint_of
from dopax.inference.fingerprint import observed_and_constant, trace_model
from dopax.inference.posterior import ChainMajorDraws
from dopax.inference.sample_stats import tree_depth
from dopax.inference.segment_program import (
    PARALLEL,
    SEQUENTIAL,
    VECTORIZED,
    SegmentProgram,
    is_key,
    leaf_paths,
    next_length,
    unbatch,
)
from dopax.inference.trace import ZarrTrace
from dopax.inference.trace_layout import (
    POSTERIOR,
    SAMPLE_STATS,
    UNCONSTRAINED_POSTERIOR,
    TraceLayout,
)

__all__ = ["TraceRun", "run_to_trace"]

logger = logging.getLogger("dopax")


@dataclasses.dataclass
class TraceRun:
    """What a traced run gives back to the model.

    Attributes:
        posterior: Latent site to draws, flattened chain-major to ``(chains *
            draws, ...)``, read from the trace's store block by block
            (:class:`~dopax.inference.posterior.ChainMajorDraws`).
        sample_stats: Sample statistic (ArviZ names) to values, flattened the
            same way.
        num_chains: Number of chains.
        last_state: The sampler state after the last draw, shaped as
            :attr:`numpyro.infer.MCMC.last_state` would be.
        trace: The trace written.
    """

    posterior: dict[str, ChainMajorDraws]
    sample_stats: dict[str, np.ndarray]
    num_chains: int
    last_state: Any
    trace: ZarrTrace


# ---------------------------------------------------------------------------- driver
def _execution(template: MCMC) -> str:
    if not isinstance(template.sampler, HMC):
        raise TypeError(
            "A ZarrTrace runs HMC and NUTS samplers; this MCMC uses "
            f"{type(template.sampler).__name__}. Fit without `trace=`."
        )
    if template.sampler.model is None:
        raise TypeError("A ZarrTrace needs a kernel built from a model, not a `potential_fn`.")
    if template.thinning != 1:
        raise ValueError(
            "A ZarrTrace keeps every draw; set `thinning=1` on the MCMC object "
            "(thin when reading the trace instead)."
        )
    if template.postprocess_fn is not None:
        raise ValueError("A ZarrTrace does not support a custom MCMC `postprocess_fn`.")
    method = template.chain_method
    if callable(method):
        raise ValueError(
            "A ZarrTrace supports the chain methods 'sequential', 'vectorized' and "
            "'parallel', not a callable."
        )
    chains = int(template.num_chains)
    if chains == 1:
        return SEQUENTIAL
    if method == PARALLEL and jax.local_device_count() < chains:
        return SEQUENTIAL
    return str(method)


def run_to_trace(
    template: MCMC,
    trace: ZarrTrace,
    key: jax.Array,
    static: tuple[tuple[str, Any], ...] | Mapping[str, Any],
    args: Mapping[str, Any],
    *,
    progress: bool,
) -> TraceRun:
    """Run (or resume, or extend) an MCMC run streamed to ``trace``.

    A new trace starts from ``key``, split into chain keys as
    :meth:`numpyro.infer.MCMC.run` splits it. A trace that holds a run goes on
    from its last durable segment with the chain keys it recorded (``key`` is
    then not used), after checking that the data, the kernel's signature and
    the sampler settings are those it was written with. A complete trace runs
    nothing.

    Args:
        template: The user's MCMC object (not run, not modified).
        trace: The trace to write to.
        key: PRNG key of a new run.
        static: Static kernel arguments.
        args: Array kernel arguments.
        progress: Whether to show a progress bar.

    Returns:
        The posterior draws, the sample statistics and the last state.

    Raises:
        TraceMismatchError: If the trace was written by another run; the trace
            is left as it was.
        TypeError: If the sampler is not HMC or NUTS on a model.
        ValueError: For MCMC settings a trace cannot honour (``thinning``,
            a callable ``chain_method``, a custom ``postprocess_fn``).
    """
    from tqdm.auto import tqdm

    execution = _execution(template)
    static = dict(static)
    args = dict(args)
    kwargs = {**args, **static}
    sampler: HMC = copy.deepcopy(template.sampler)
    num_chains = int(template.num_chains)
    num_warmup = int(template.num_warmup)
    model_trace = trace_model(sampler.model, kwargs)
    fingerprint = fingerprint_of(template, execution, static, args, model_trace)

    resuming = trace.initialized
    marker: dict[str, list[Any]] | None = None
    if resuming:
        trace._check(fingerprint)
        key_data, impl = trace._read_chain_keys()
        chain_keys = jax.random.wrap_key_data(jnp.asarray(key_data), impl=impl)
        marker = trace._progress()
        assert marker is not None
    else:
        if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.wrap_key_data(key)  # a legacy uint32 key
        chain_keys = jax.random.split(key, num_chains) if num_chains > 1 else key[None]

    # Initialise the kernel (its closures hold the warm-up schedule) and the chains
    # that have not started, as MCMC.run does; the others continue from their
    # stored state. When every chain has started, the kernel's `init` is only
    # traced (`jax.eval_shape`): that builds its closures without computing, or
    # compiling, an initial state.
    started = [False] * num_chains if marker is None else [i > 0 for i in marker["iterations"]]

    def init(keys: jax.Array) -> Any:
        return sampler.init(keys, num_warmup, None, (), kwargs)

    fresh: dict[int, Any] = {}
    batched_fresh = None
    if all(started):
        keys = chain_keys if execution == VECTORIZED else chain_keys[0]
        one_chain = jax.eval_shape(init, keys)
        if execution == VECTORIZED:
            one_chain = unbatch(one_chain)
    elif execution == VECTORIZED:
        batched_fresh = init(chain_keys)
        one_chain = unbatch(batched_fresh)
    elif execution == PARALLEL:
        # Each chain initialised on its own device.
        batched_fresh = jax.pmap(init)(chain_keys)
        one_chain = unbatch(batched_fresh)
    else:
        for c in range(num_chains):
            if not started[c]:
                fresh[c] = init(chain_keys[c])
        one_chain = next(iter(fresh.values()))
    treedef = jax.tree.structure(one_chain)
    paths = leaf_paths(one_chain)

    constrained_shapes = jax.eval_shape(sampler.postprocess_fn((), kwargs), one_chain.z)
    latent = tuple(sorted(name for name in constrained_shapes if name in one_chain.z))
    dpc = trace.draws_per_chunk
    segments = SegmentProgram(sampler, kwargs, execution, dpc, trace.include_transformed, latent)

    if not resuming:
        first = batched_fresh if execution == VECTORIZED else one_chain
        record_shapes = jax.eval_shape(segments.record, first)
        cut = 1 if execution == VECTORIZED else 0

        def shape_of(s: Any) -> tuple[tuple[int, ...], str]:
            return tuple(int(d) for d in s.shape[cut:]), np.dtype(s.dtype).str

        stats = {name: shape_of(s)[1] for name, s in record_shapes[SAMPLE_STATS].items()}
        nuts = getattr(sampler, "_algo", None) == "NUTS"
        if nuts and "n_steps" in stats:
            stats["tree_depth"] = np.dtype(np.int64).str
        leaves: list[tuple[str, tuple[int, ...], str, str | None]] = []
        for path, leaf in zip(paths, jax.tree.leaves(one_chain), strict=True):
            if is_key(leaf):
                data = jax.random.key_data(leaf)
                impl_name = str(jax.random.key_impl(leaf))
                leaves.append((path, tuple(data.shape), np.dtype(data.dtype).str, impl_name))
            else:
                leaves.append((path, tuple(leaf.shape), np.dtype(leaf.dtype).str, None))
        observed, constant = observed_and_constant(model_trace, args)
        layout = TraceLayout(
            num_chains=num_chains,
            num_warmup=num_warmup,
            num_samples=int(template.num_samples),
            posterior={k: shape_of(v) for k, v in record_shapes[POSTERIOR].items()},
            unconstrained={
                k: shape_of(v) for k, v in record_shapes.get(UNCONSTRAINED_POSTERIOR, {}).items()
            },
            stats=stats,
            state_leaves=leaves,
            chain_keys=np.asarray(jax.random.key_data(chain_keys)),
            key_impl=str(jax.random.key_impl(chain_keys)),
            observed=observed,
            constant=constant,
            fingerprint=fingerprint,
        )
        trace._create(layout)
        marker = trace._progress()
        assert marker is not None
    else:
        stored_paths, _ = trace._state_meta()
        if stored_paths != paths:
            raise TraceMismatchError(
                "The sampler state stored in the trace has another layout than this "
                f"sampler's (trace: {stored_paths}, now: {paths})."
            )
    assert marker is not None
    nuts = getattr(sampler, "_algo", None) == "NUTS"

    def load(chain: int) -> list[Any]:
        _, impls = trace._state_meta()
        leaves = trace._read_state(chain)
        return [
            jax.random.wrap_key_data(jnp.asarray(leaf), impl=impl)
            if impl is not None
            else jnp.asarray(leaf)
            for leaf, impl in zip(leaves, impls, strict=True)
        ]

    # The units the segment function runs on: one chain each, or all chains at once.
    units: list[tuple[slice, Any]] = []
    if execution == SEQUENTIAL:
        for c in range(num_chains):
            state = jax.tree.unflatten(treedef, load(c)) if started[c] else fresh[c]
            units.append((slice(c, c + 1), state))
    else:
        # Chains of one program start and stop together: all started, or none.
        if batched_fresh is None:
            per_chain = [load(c) for c in range(num_chains)]
            stacked = [jnp.stack(leaves) for leaves in zip(*per_chain, strict=True)]
            batched_fresh = jax.tree.unflatten(treedef, stacked)
        units.append((slice(0, num_chains), batched_fresh))

    total = num_warmup + int(trace.num_samples or 0)
    positions = [int(i) for i in marker["iterations"]]
    write_segment = trace._segment_writer()
    show = bool(progress) and bool(template.progress_bar)
    bar = tqdm(
        total=num_chains * total,
        initial=sum(min(p, total) for p in positions),
        disable=not show or min(positions) >= total,
        desc="warmup" if min(positions) < num_warmup else "sample",
        leave=False,
    )

    def flush(chains: slice, start: int, n: int, state: Any, buffers: Any) -> None:
        records = segments.host_records(buffers, n)
        if nuts and "n_steps" in records[SAMPLE_STATS]:
            records[SAMPLE_STATS]["tree_depth"] = tree_depth(records[SAMPLE_STATS]["n_steps"])
        write_segment(chains, start, records, segments.host_state(state), marker)
        bar.update(n * (chains.stop - chains.start))
        if start + n >= num_warmup:
            bar.set_description("sample", refresh=False)

    pending: tuple[slice, int, int, Any, Any] | None = None
    try:
        while True:
            advanced = False
            for u, (chains, state) in enumerate(units):
                position = positions[chains.start]
                if position >= total:
                    continue
                n = next_length(position, num_warmup, total, dpc)
                state, buffers = segments.fn(state, np.int32(n))
                units[u] = (chains, state)
                for c in range(chains.start, chains.stop):
                    positions[c] = position + n
                if pending is not None:
                    flush(*pending)
                pending = (chains, position, n, state, buffers)
                advanced = True
            if not advanced:
                break
        if pending is not None:
            flush(*pending)
            pending = None
    except BaseException:
        logger.info(
            "Sampling stopped; %r keeps the durable segments. Pass the reopened trace "
            "(`ZarrTrace.open`) to `fit_on_batch` to resume.",
            trace,
        )
        raise
    finally:
        bar.close()

    # the draws stay in the store, read a block of draws at a time when used
    posterior = {
        k: ChainMajorDraws(v, where=repr(trace)) for k, v in trace._stored_group(POSTERIOR).items()
    }
    sample_stats = trace._read_group(SAMPLE_STATS)
    if len(units) == 1:  # all chains in one unit, or a single chain
        last_state = units[0][1]
    else:
        last_state = jax.tree.map(lambda *xs: jnp.stack(xs), *(state for _, state in units))
    return TraceRun(
        posterior=posterior,
        sample_stats=_flatten(sample_stats),
        num_chains=num_chains,
        last_state=last_state,
        trace=trace,
    )


def _flatten(grouped: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        name: value.reshape(value.shape[0] * value.shape[1], *value.shape[2:])
        for name, value in grouped.items()
    }
