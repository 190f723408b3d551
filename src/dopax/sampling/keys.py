"""PRNG key checks: the one place a user's key is checked and converted."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dopax._warn import warn

__all__ = ["check_key", "typed_key"]


def _kind(key: Any, name: str) -> str:
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise TypeError(f"`{name}` must be a single key; got a batch of shape {key.shape}.")
        return "typed"
    if getattr(key, "dtype", None) == np.uint32 and getattr(key, "shape", None) == (2,):
        return "legacy"
    raise TypeError(
        f"`{name}` must be a JAX PRNG key such as `jax.random.key(0)`; got {type(key).__name__}."
    )


def check_key(key: Any, name: str = "rng_key") -> None:
    """Check a key without device work, warning for a legacy ``uint32`` key.

    Args:
        key: The key.
        name: The argument's name, for messages.
    """
    if _kind(key, name) == "legacy":
        warn(
            f"`{name}` is a legacy uint32 key; it is converted with `jax.random.wrap_key_data`. "
            "Pass `jax.random.key(seed)` instead.",
            UserWarning,
        )


def typed_key(key: Any, name: str = "rng_key") -> jax.Array:
    """Return ``key`` as a typed key (a legacy ``uint32`` key is wrapped, silently).

    Args:
        key: A checked key (see :func:`check_key`).
        name: The argument's name, for messages.
    """
    if _kind(key, name) == "typed":
        return key  # type: ignore[no-any-return]
    return jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32))
