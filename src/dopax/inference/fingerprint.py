"""What identifies a traced MCMC run: its data, its kernel and its sampler settings.

A trace records the fingerprint of the run that wrote it; resuming with
another one raises :class:`~dopax.exceptions.TraceMismatchError` naming what
differs (see :meth:`dopax.inference.trace.ZarrTrace._check`).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from numpyro import handlers
from numpyro.infer import MCMC

from dopax.kernel.tracing import TRACE_LOCK

__all__ = ["digest", "fingerprint", "observed_and_constant", "trace_model"]


def digest(arr: Any) -> str:
    """A short SHA-256 of an array's dtype, shape and bytes."""
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
        return {"sha256": digest(value)}
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


def fingerprint(
    template: MCMC,
    execution: str,
    static: Mapping[str, Any],
    args: Mapping[str, Any],
    model_trace: Mapping[str, Any],
) -> dict[str, dict[str, Any]]:
    """Fingerprint of a run: its data, its kernel's signature and its sampler settings."""
    sampler = template.sampler
    data: dict[str, Any] = {name: digest(value) for name, value in sorted(args.items())}
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


def trace_model(model: Callable[..., Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
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

    with TRACE_LOCK:
        jax.eval_shape(run)
    return sites


def observed_and_constant(
    model_trace: Mapping[str, Any], args: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The observed sites' data, and the other array arguments (``constant_data``)."""
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
