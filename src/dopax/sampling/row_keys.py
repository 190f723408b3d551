"""The PRNG implementation whose keys carry a row offset (see :mod:`dopax.sampling.rng`).

Its key data is three ``uint32`` words ``(k1, k2, offset)``: a Threefry-2x32
key and the global index of the first row of the batch. Random bits for an
array of shape ``(n, *rest)`` use the Threefry counter ``(offset + i, j)`` for
element ``(i, j)``, so row ``offset + i`` receives the same bits whatever
batch it falls in.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import random as jex_random

from dopax.sampling.threefry import threefry2x32

__all__ = ["ROW_KEY_IMPL"]

_U32 = jnp.uint32
# Counter words reserved for key derivation; bits counters use j < 2**31.
_TAG_SPLIT = np.uint32(0x80000000)
_TAG_FOLD = np.uint32(0xFFFFFFFF)
_TAG_SITE = np.uint32(0xFFFFFFFE)
_TAG_GUIDE = np.uint32(0xFFFFFFFD)
_TAG_STEP = np.uint32(0xFFFFFFFC)


def _seed(seed: jax.Array) -> jax.Array:
    seed = jnp.asarray(seed)
    low = lax.convert_element_type(seed, _U32)
    return jnp.stack([jnp.zeros((), _U32), low, jnp.zeros((), _U32)])


def _counters(offset: jax.Array, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    if len(shape) == 0:
        return jnp.broadcast_to(offset, (1,)), jnp.zeros((1,), _U32)
    lead = shape[0]
    rest = int(np.prod(shape[1:], dtype=np.int64))
    if rest >= int(_TAG_SPLIT):
        raise ValueError("A single row of a random site may hold at most 2**31 elements.")
    hi = offset + lax.broadcasted_iota(_U32, (lead, rest), 0)
    lo = lax.broadcasted_iota(_U32, (lead, rest), 1)
    return hi.reshape(-1), lo.reshape(-1)


def _random_bits(key: jax.Array, bit_width: int, shape: tuple[int, ...]) -> jax.Array:
    size = int(np.prod(shape, dtype=np.int64))
    dtype = np.dtype(f"uint{bit_width}")
    if size == 0:
        return jnp.zeros(shape, dtype)
    hi, lo = _counters(key[2], shape)
    y1, y2 = threefry2x32(key[0], key[1], hi, lo)
    if bit_width == 64:
        out = (y1.astype(jnp.uint64) << 32) | y2.astype(jnp.uint64)
    else:
        out = (y1 ^ y2).astype(dtype)
    return out.reshape(shape)


def _split(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    size = int(np.prod(shape, dtype=np.int64))
    hi, lo = _counters(key[2], shape if shape else ())
    lo = lo | _TAG_SPLIT
    y1, y2 = threefry2x32(key[0], key[1], hi[:size], lo[:size])
    zeros = jnp.zeros_like(y1)
    return jnp.stack([y1, y2, zeros], axis=-1).reshape(*shape, 3)


def _fold_in(key: jax.Array, data: jax.Array) -> jax.Array:
    y1, y2 = threefry2x32(key[0], key[1], _TAG_FOLD, lax.convert_element_type(data, _U32))
    return jnp.stack([y1, y2, key[2]])


#: The PRNG implementation whose keys carry a row offset.
ROW_KEY_IMPL = jex_random.define_prng_impl(
    key_shape=(3,),
    seed=_seed,
    split=_split,
    random_bits=_random_bits,
    fold_in=_fold_in,  # type: ignore[arg-type]
    name="dopax_row_offset",
    tag="dpx",
)
