"""The one abstract trace of a kernel: site kinds, shapes and dtypes, with no FLOPs."""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers

from dopax._warn import ignoring
from dopax.exceptions import KernelValidationError
from dopax.kernel.tracing import TRACE_LOCK
from dopax.sampling.rng import RowKeySeed

__all__ = ["Probe", "probe_kernel", "probe_sites"]

#: Probes per kernel, by the arguments' shapes and dtypes and the static arguments.
_SEEN: weakref.WeakKeyDictionary[Any, dict[Any, Probe]] = weakref.WeakKeyDictionary()
_SEEN_PER_KERNEL = 64


@dataclasses.dataclass(frozen=True)
class Probe:
    """What one abstract trace of a kernel shows.

    Attributes:
        sites: Site name to ``{"type", "is_observed", "shape", "dtype"}``, in
            trace order (sample, deterministic and other sites alike).
        matmul_flops: Flops of the matrix products in the traced program
            (``dot_general``; a loop's body counts once per iteration of a
            ``scan``).
    """

    sites: dict[str, dict[str, Any]]
    matmul_flops: float


def _abstract(value: Any) -> jax.ShapeDtypeStruct:
    dtype = value.dtype if hasattr(value, "dtype") else np.result_type(value)
    return jax.ShapeDtypeStruct(np.shape(value), jax.dtypes.canonicalize_dtype(dtype))


def _subjaxprs(value: Any) -> list[Any]:
    if hasattr(value, "eqns"):
        return [value]
    if hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        return [value.jaxpr]
    if isinstance(value, list | tuple):
        return [j for v in value for j in _subjaxprs(v)]
    return []


def matmul_flops(jaxpr: Any) -> float:
    """Return the flops of the matrix products in ``jaxpr`` (nested programs included)."""
    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            out = eqn.outvars[0].aval.shape
            total += 2.0 * math.prod(out) * math.prod(lhs[i] for i in contract)
            continue
        inner = [matmul_flops(j) for v in eqn.params.values() for j in _subjaxprs(v)]
        if not inner:
            continue
        if eqn.primitive.name == "cond":
            total += max(inner)
        else:
            total += sum(inner) * float(eqn.params.get("length", 1))
    return total


def probe_kernel(
    kernel: Callable[..., Any],
    args: Mapping[str, Any],
    static: tuple[tuple[str, Any], ...] = (),
) -> Probe:
    """Trace ``kernel`` abstractly (no FLOPs run) and describe its sites.

    Only the shapes and dtypes of ``args`` matter, so a kernel is traced once
    per distinct signature: later probes with the same signature (the model's
    first trace, the planner, ``log_likelihood``) reuse the result.

    Args:
        kernel: The NumPyro model function.
        args: Array arguments of the kernel.
        static: Static ``(name, value)`` arguments of the kernel.

    Raises:
        KernelValidationError: When a site's sampler refuses dopax's row-offset keys.
    """
    abstract = {k: _abstract(v) for k, v in args.items()}
    key = (tuple(sorted((k, a.shape, str(a.dtype)) for k, a in abstract.items())), static)
    try:
        seen = _SEEN.setdefault(kernel, {})
    except TypeError:  # a kernel that cannot be weakly referenced: no reuse
        seen = {}
    found = seen.get(key)
    if found is not None:
        return found
    sites: dict[str, dict[str, Any]] = {}

    def run(arrays: Mapping[str, Any]) -> dict[str, jax.Array]:
        model = RowKeySeed(kernel, jnp.zeros((2,), jnp.uint32), 0)
        trace = handlers.trace(model).get_trace(**arrays, **dict(static))
        values = {}
        for name, site in trace.items():
            sites[name] = {"type": site["type"], "is_observed": bool(site.get("is_observed"))}
            fn = site.get("fn")
            if site["type"] == "sample" and hasattr(fn, "batch_shape"):
                sites[name]["fn_shape"] = (*fn.batch_shape, *fn.event_shape)
            if site["type"] in ("sample", "deterministic"):
                values[name] = jnp.asarray(site["value"])
        return values

    try:
        # a subsampled plate (NumPyro's mini-batch pattern) is larger than the
        # probe's few rows: NumPyro's warning about that concerns the probe only
        with TRACE_LOCK, ignoring("subsample_size does not match len", UserWarning):
            closed, shapes = jax.make_jaxpr(run, return_shape=True)(abstract)
    except NotImplementedError as err:
        if "threefry" not in str(err):
            raise
        raise KernelValidationError(
            "A sample site's sampler accepts only JAX's default key type "
            f"({err}). dopax draws every site from row-keyed random streams and "
            "draws the NumPyro distributions built on `jax.random.poisson` itself; "
            "a distribution that calls such a sampler directly cannot be used."
        ) from err
    for name, info in sites.items():
        if name in shapes:
            info["shape"] = tuple(shapes[name].shape)
            info["dtype"] = str(shapes[name].dtype)
    found = Probe(sites, matmul_flops(closed.jaxpr))
    if len(seen) >= _SEEN_PER_KERNEL:
        seen.clear()
    seen[key] = found
    return found


def probe_sites(
    kernel: Callable[..., Any],
    args: Mapping[str, Any],
    static: tuple[tuple[str, Any], ...] = (),
) -> dict[str, dict[str, Any]]:
    """Describe every site of ``kernel`` from one abstract trace (see :func:`probe_kernel`).

    Args:
        kernel: The NumPyro model function.
        args: Array arguments of the kernel.
        static: Static ``(name, value)`` arguments of the kernel.

    Returns:
        Site name to ``{"type", "is_observed", "shape", "dtype"}``, in trace
        order (a copy the caller may change); sample sites also have
        ``"fn_shape"``, the shape of their distribution (batch and event).

    Raises:
        KernelValidationError: When a site's sampler refuses dopax's row-offset keys.
    """
    sites = probe_kernel(kernel, args, static).sites
    return {name: dict(info) for name, info in sites.items()}
