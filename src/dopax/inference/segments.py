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
import functools
import hashlib
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from numpyro import handlers
from numpyro.infer import HMC, MCMC

from dopax.exceptions import TraceMismatchError
from dopax.inference.trace import (
    POSTERIOR,
    SAMPLE_STATS,
    UNCONSTRAINED_POSTERIOR,
    TraceLayout,
    ZarrTrace,
)

__all__ = ["STAT_NAMES", "TraceRun", "arviz_stats", "run_to_trace"]

logger = logging.getLogger("dopax")

#: NumPyro state fields (as ``extra_fields`` names) and their ArviZ names.
STAT_NAMES: Mapping[str, str] = {
    "diverging": "diverging",
    "energy": "energy",
    "potential_energy": "lp",
    "num_steps": "n_steps",
    "accept_prob": "acceptance_rate",
    "adapt_state.step_size": "step_size",
}

_SEQUENTIAL = "sequential"
_VECTORIZED = "vectorized"
_PARALLEL = "parallel"


def arviz_stats(fields: Mapping[str, Any], *, nuts: bool) -> dict[str, np.ndarray]:
    """Rename NumPyro's state fields to ArviZ's sample statistics.

    ``potential_energy`` becomes ``lp`` (negated), ``num_steps`` becomes
    ``n_steps`` and, for NUTS, also ``tree_depth`` (``floor(log2(n_steps)) +
    1``, as ArviZ's NumPyro converter computes it).

    Args:
        fields: NumPyro field name (see :data:`STAT_NAMES`) to array.
        nuts: Whether the sampler is NUTS.
    """
    out: dict[str, np.ndarray] = {}
    for field, name in STAT_NAMES.items():
        if field not in fields or fields[field] is None:
            continue
        value = np.asarray(fields[field])
        out[name] = -value if field == "potential_energy" else value
    if nuts and "n_steps" in out:
        out["tree_depth"] = _tree_depth(out["n_steps"])
    return out


def _tree_depth(n_steps: np.ndarray) -> np.ndarray:
    return (np.log2(np.maximum(np.asarray(n_steps), 1)).astype(np.int64) + 1).astype(np.int64)


@dataclasses.dataclass
class TraceRun:
    """What a traced run gives back to the model.

    Attributes:
        posterior: Latent site to draws, flattened chain-major to ``(chains *
            draws, ...)``.
        sample_stats: Sample statistic (ArviZ names) to values, flattened the
            same way.
        num_chains: Number of chains.
        last_state: The sampler state after the last draw, shaped as
            :attr:`numpyro.infer.MCMC.last_state` would be.
        trace: The trace written.
    """

    posterior: dict[str, np.ndarray]
    sample_stats: dict[str, np.ndarray]
    num_chains: int
    last_state: Any
    trace: ZarrTrace


# ---------------------------------------------------------------------------- fingerprint
def _digest(arr: Any) -> str:
    value = np.ascontiguousarray(np.asarray(arr))
    h = hashlib.sha256()
    h.update(f"{value.dtype.str}{value.shape}".encode())
    h.update(value.reshape(-1).view(np.uint8).data)
    return h.hexdigest()[:32]


def _describe(value: Any) -> Any:
    """A JSON-able description of a sampler setting."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, functools.partial):
        return {
            "function": _describe(value.func),
            "args": [_describe(a) for a in value.args],
            "kwargs": {str(k): _describe(v) for k, v in sorted(value.keywords.items())},
        }
    if isinstance(value, np.ndarray | jax.Array):
        if np.ndim(value) == 0:
            return _describe(np.asarray(value).item())
        return {"sha256": _digest(value)}
    if isinstance(value, dict):
        return {str(k): _describe(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, tuple | list):
        return [_describe(v) for v in value]
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}"
    return repr(value)


_HMC_SETTINGS = (
    "_algo",
    "_step_size",
    "_adapt_step_size",
    "_adapt_mass_matrix",
    "_dense_mass",
    "_inverse_mass_matrix",
    "_target_accept_prob",
    "_trajectory_length",
    "_num_steps",
    "_max_tree_depth",
    "_find_heuristic_step_size",
    "_forward_mode_differentiation",
    "_regularize_mass_matrix",
    "_init_strategy",
    "_kinetic_fn",
)


def _fingerprint(
    template: MCMC,
    execution: str,
    static: Mapping[str, Any],
    args: Mapping[str, Any],
    model_trace: Mapping[str, Any],
) -> dict[str, dict[str, Any]]:
    """Fingerprint of a run: its data, its kernel's signature and its sampler settings."""
    sampler = template.sampler
    data: dict[str, Any] = {name: _digest(value) for name, value in sorted(args.items())}
    data.update({name: repr(value) for name, value in sorted(static.items())})
    model = sampler.model
    try:
        parameters = list(inspect.signature(model).parameters)
    except (TypeError, ValueError):
        parameters = []
    sites = sorted(
        f"{name}:{'observed' if site.get('is_observed') else site['type']}"
        for name, site in model_trace.items()
        if site["type"] in ("sample", "deterministic")
    )
    kernel = {
        "name": f"{getattr(model, '__module__', '?')}."
        f"{getattr(model, '__qualname__', type(model).__name__)}",
        "parameters": parameters,
        "sites": sites,
    }
    settings: dict[str, Any] = {
        "kernel": f"{type(sampler).__module__}.{type(sampler).__qualname__}",
        "num_warmup": int(template.num_warmup),
        "num_samples": int(template.num_samples),
        "num_chains": int(template.num_chains),
        "thinning": int(template.thinning),
        "chain_method": execution,
        "postprocess_fn": _describe(template.postprocess_fn),
        "jax_enable_x64": bool(jax.config.read("jax_enable_x64")),
    }
    for attr in _HMC_SETTINGS:
        if hasattr(sampler, attr):
            settings[attr.lstrip("_")] = _describe(getattr(sampler, attr))
    return {"data": data, "kernel": kernel, "sampler": settings}


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
        return _SEQUENTIAL
    if method == _PARALLEL and jax.local_device_count() < chains:
        return _SEQUENTIAL
    return str(method)


def _is_key(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _host_leaves(state: Any) -> list[np.ndarray]:
    """The state's leaves as NumPy arrays (key leaves as key data)."""
    return [
        np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf)
        for leaf in jax.tree.leaves(state)
    ]


def _leaf_paths(state: Any) -> list[str]:
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    return [jax.tree_util.keystr(path) for path, _ in flat]


def _unbatch(tree: Any) -> Any:
    """The first chain of a batched state (arrays or shapes)."""
    return jax.tree.map(
        lambda x: x[0] if isinstance(x, jax.Array) else jax.ShapeDtypeStruct(x.shape[1:], x.dtype),
        tree,
    )


def _trace_model(model: Callable[..., Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The model's sites: name, type, whether observed, and observed values.

    The model is traced abstractly (nothing is computed or compiled); the
    observed values are the arrays the model was given.
    """
    sites: dict[str, Any] = {}

    def run() -> None:
        trace = handlers.trace(handlers.seed(model, rng_seed=0)).get_trace(**kwargs)
        for name, site in trace.items():
            value = site.get("value")
            if isinstance(value, jax.core.Tracer):
                value = None
            sites[name] = {
                "type": site["type"],
                "is_observed": bool(site.get("is_observed", False)),
                "value": value,
            }

    jax.eval_shape(run)
    return sites


def _observed_and_constant(
    model_trace: Mapping[str, Any], args: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    observed: dict[str, np.ndarray] = {}
    observed_values: list[Any] = []
    for name, site in model_trace.items():
        if site["type"] == "sample" and site["is_observed"] and hasattr(site["value"], "shape"):
            observed[name] = np.asarray(site["value"])
            observed_values.append(site["value"])
    constant = {
        name: np.asarray(value)
        for name, value in args.items()
        if hasattr(value, "shape")
        and name not in observed
        and not any(value is obs for obs in observed_values)
    }
    return observed, constant


class _Segments:
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
        if execution == _VECTORIZED:
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
        if execution == _PARALLEL:
            self.fn = jax.pmap(segment, in_axes=(0, None))
        else:
            self.fn = jax.jit(segment)

    def host_records(self, buffers: Any, n: int) -> dict[str, dict[str, np.ndarray]]:
        """The segment's records as ``(chains, n, ...)`` NumPy arrays."""

        def convert(buf: Any) -> np.ndarray:
            arr = np.asarray(buf)
            if self.execution == _VECTORIZED:
                return np.swapaxes(arr[:n], 0, 1)
            if self.execution == _PARALLEL:
                return arr[:, :n]
            return arr[None, :n]

        return jax.tree.map(convert, buffers)

    def host_state(self, state: Any) -> list[np.ndarray]:
        """The state's leaves as ``(chains, ...)`` NumPy arrays."""
        leaves = _host_leaves(state)
        if self.execution in (_VECTORIZED, _PARALLEL):
            return leaves
        return [leaf[None] for leaf in leaves]


def _next_length(position: int, num_warmup: int, total: int, dpc: int) -> int:
    """Length of the segment from ``position``: up to the next chunk edge or phase end."""
    if position < num_warmup:
        return min(dpc - position % dpc, num_warmup - position)
    offset = position - num_warmup
    return min(dpc - offset % dpc, total - position)


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
    model_trace = _trace_model(sampler.model, kwargs)
    fingerprint = _fingerprint(template, execution, static, args, model_trace)

    resuming = trace.initialized
    marker: dict[str, list[int]] | None = None
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
        keys = chain_keys if execution == _VECTORIZED else chain_keys[0]
        one_chain = jax.eval_shape(init, keys)
        if execution == _VECTORIZED:
            one_chain = _unbatch(one_chain)
    elif execution == _VECTORIZED:
        batched_fresh = init(chain_keys)
        one_chain = _unbatch(batched_fresh)
    elif execution == _PARALLEL:
        # Each chain initialised on its own device.
        batched_fresh = jax.pmap(init)(chain_keys)
        one_chain = _unbatch(batched_fresh)
    else:
        for c in range(num_chains):
            if not started[c]:
                fresh[c] = init(chain_keys[c])
        one_chain = next(iter(fresh.values()))
    treedef = jax.tree.structure(one_chain)
    paths = _leaf_paths(one_chain)

    constrained_shapes = jax.eval_shape(sampler.postprocess_fn((), kwargs), one_chain.z)
    latent = tuple(sorted(name for name in constrained_shapes if name in one_chain.z))
    dpc = trace.draws_per_chunk
    segments = _Segments(sampler, kwargs, execution, dpc, trace.include_transformed, latent)

    if not resuming:
        first = batched_fresh if execution == _VECTORIZED else one_chain
        record_shapes = jax.eval_shape(segments.record, first)
        cut = 1 if execution == _VECTORIZED else 0

        def shape_of(s: Any) -> tuple[tuple[int, ...], str]:
            return tuple(int(d) for d in s.shape[cut:]), np.dtype(s.dtype).str

        stats = {name: shape_of(s)[1] for name, s in record_shapes[SAMPLE_STATS].items()}
        nuts = getattr(sampler, "_algo", None) == "NUTS"
        if nuts and "n_steps" in stats:
            stats["tree_depth"] = np.dtype(np.int64).str
        leaves: list[tuple[str, tuple[int, ...], str, str | None]] = []
        for path, leaf in zip(paths, jax.tree.leaves(one_chain), strict=True):
            if _is_key(leaf):
                data = jax.random.key_data(leaf)
                impl_name = str(jax.random.key_impl(leaf))
                leaves.append((path, tuple(data.shape), np.dtype(data.dtype).str, impl_name))
            else:
                leaves.append((path, tuple(leaf.shape), np.dtype(leaf.dtype).str, None))
        observed, constant = _observed_and_constant(model_trace, args)
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
    if execution == _SEQUENTIAL:
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
    root, arrays = trace._open_arrays()
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
            records[SAMPLE_STATS]["tree_depth"] = _tree_depth(records[SAMPLE_STATS]["n_steps"])
        trace._write_segment(
            root, arrays, chains, start, records, segments.host_state(state), marker
        )
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
                n = _next_length(position, num_warmup, total, dpc)
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

    posterior = trace._read_group(POSTERIOR)
    sample_stats = trace._read_group(SAMPLE_STATS)
    if len(units) == 1:  # all chains in one unit, or a single chain
        last_state = units[0][1]
    else:
        last_state = jax.tree.map(lambda *xs: jnp.stack(xs), *(state for _, state in units))
    return TraceRun(
        posterior=_flatten(posterior),
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
