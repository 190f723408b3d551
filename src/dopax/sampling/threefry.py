"""Threefry-2x32, the counter-based hash behind every random number dopax draws.

Threefry-2x32 with 20 rounds (Salmon et al., 2011), written as plain unrolled
integer operations. It gives bit for bit the same output as JAX's
``threefry2x32`` primitive (asserted in the tests), but XLA fuses it with the
code that consumes the bits (e.g. the transform to normal draws) into one
vectorised loop, whereas the primitive's CPU lowering runs its rounds as a
loop over whole arrays held in memory.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["threefry2x32"]

_U32 = jnp.uint32
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotl(x: jax.Array, d: int) -> jax.Array:
    return (x << np.uint32(d)) | (x >> np.uint32(32 - d))


def threefry2x32(k1: Any, k2: Any, c1: Any, c2: Any) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32 (20 rounds) of counters ``(c1, c2)`` under key ``(k1, k2)``.

    Equal bit for bit to JAX's ``threefry2x32`` primitive. All four arguments
    broadcast against each other (NumPy rules), so keys may vary per element.

    Args:
        k1: First key word (``uint32``).
        k2: Second key word (``uint32``).
        c1: First counter words (``uint32`` array).
        c2: Second counter words (``uint32`` array).
    """
    k1 = jnp.asarray(k1, _U32)
    k2 = jnp.asarray(k2, _U32)
    x0, x1 = jnp.broadcast_arrays(jnp.asarray(c1, _U32), jnp.asarray(c2, _U32))
    ks = (k1, k2, k1 ^ k2 ^ _PARITY)
    x0 = x0 + ks[0]
    x1 = x1 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = _rotl(x1, r) ^ x0
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1
