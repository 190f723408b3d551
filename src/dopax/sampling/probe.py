"""The one abstract trace of a kernel: site kinds, shapes and dtypes, with no FLOPs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from numpyro import handlers

from dopax.exceptions import KernelValidationError
from dopax.sampling.rng import RowKeySeed

__all__ = ["probe_sites"]


def probe_sites(
    kernel: Callable[..., Any],
    args: Mapping[str, Any],
    static: tuple[tuple[str, Any], ...] = (),
) -> dict[str, dict[str, Any]]:
    """Trace ``kernel`` abstractly (``jax.eval_shape``) and describe every site.

    Args:
        kernel: The NumPyro model function.
        args: Array arguments of the kernel.
        static: Static ``(name, value)`` arguments of the kernel.

    Returns:
        Site name to ``{"type", "is_observed", "shape", "dtype"}``, in trace
        order (sample, deterministic and other sites alike); sample sites also
        have ``"fn_shape"``, the shape of their distribution (batch and event).

    Raises:
        KernelValidationError: When a site's sampler refuses dopax's row-offset keys.
    """
    sites: dict[str, dict[str, Any]] = {}

    def run() -> dict[str, jax.Array]:
        model = RowKeySeed(kernel, jnp.zeros((2,), jnp.uint32), 0)
        trace = handlers.trace(model).get_trace(**args, **dict(static))
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
        shapes = jax.eval_shape(run)
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
    return sites
