"""The random-number scheme: draws that depend only on ``(key, draw, site, row)``.

A forward pass gives every random site a key of the *row-offset* PRNG
implementation defined here. Its key data is three ``uint32`` words
``(k1, k2, offset)``: a Threefry-2x32 key and the global index of the first row
of the batch. Random bits for an array of shape ``(n, *rest)`` use the Threefry
counter ``(offset + i, j)`` for element ``(i, j)`` (``j`` the flat index within
``rest``), so row ``offset + i`` receives the same bits whatever batch it falls
in. Generating bits costs one hash per element, as JAX's own partitionable
Threefry does. Samplers that turn these bits into values elementwise (the
normal family, Bernoulli, uniform, exponential, ...) therefore keep rows
independent of their batch. The hash (:mod:`dopax.sampling.threefry`) is
written as plain integer operations that XLA fuses with the code consuming
the bits; on CPU this makes normal draws several times faster than
``jax.random.normal`` (``BENCHMARKS.md``).

NumPyro's samplers for other families split their key first, split it per
flat element, or need JAX's default key type (``jax.random.poisson``); their
draws would depend on the batch. :class:`RowKeySeed` draws those sites itself
with :mod:`dopax.sampling.samplers` (``Poisson``, ``Binomial``, ``Gamma``,
``StudentT``, ``Beta``, ``Dirichlet``, ``GammaPoisson`` and the negative
binomials, ``BetaBinomial``, zero-inflated laws, ``Categorical``), from
streams addressed by the same key words, row and element.

Site keys are derived from the draw's key and a hash of the site *name*, so a
site receives the same random numbers whether or not other sites are
intervened on: scenarios share their random numbers.

Whether a particular kernel keeps rows independent (its row axis leading, no
coupling between rows, no other sampler that ties rows together) is checked
on a probe by :mod:`dopax.sampling.plan`; kernels that fail the check run
with all rows in one piece, with a warning that names the site and why.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import random as jex_random
from numpyro.primitives import Messenger

from dopax.sampling.samplers import row_sample, row_sampled
from dopax.sampling.threefry import threefry2x32

__all__ = ["ROW_KEY_IMPL", "RowKeySeed", "draw_words", "name_tag", "threefry2x32"]

_U32 = jnp.uint32
# Counter words reserved for key derivation; bits counters use j < 2**31.
_TAG_SPLIT = np.uint32(0x80000000)
_TAG_FOLD = np.uint32(0xFFFFFFFF)
_TAG_SITE = np.uint32(0xFFFFFFFE)


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


def name_tag(name: str) -> np.uint32:
    """Return the 32-bit tag that identifies a site name in key derivation.

    Args:
        name: Site name.
    """
    return np.uint32(zlib.crc32(name.encode("utf-8")))


def draw_words(call_key: jax.Array, draw_index: jax.Array) -> jax.Array:
    """Return the two key words of one posterior draw.

    Args:
        call_key: The call's typed PRNG key (any implementation).
        draw_index: Global index of the draw (an integer scalar).
    """
    return jax.random.bits(jax.random.fold_in(call_key, draw_index), (2,), jnp.uint32)


class RowKeySeed(Messenger):
    """Give every random site a row-offset key derived from its name.

    Replaces :class:`numpyro.handlers.seed` inside dopax's forward passes. Site
    ``name`` of draw ``d`` gets Threefry key ``hash(words_d, (TAG, crc32(name)))``
    and the batch's row offset, so its bits depend on (key, draw, site, row).
    A name met twice in one pass (e.g. inside ``scan``) gets a fresh key each
    time.

    Sites whose NumPyro sampler would lose the row identity of the key (it
    splits the key, or needs JAX's default key type) are drawn by
    :func:`dopax.sampling.samplers.row_sample` from the same key words
    instead; the site's value is set here and its ``rng_key`` still recorded.

    Args:
        fn: The model to run.
        words: The draw's two key words (see :func:`draw_words`).
        row_offset: Global index of the first row of this batch.
    """

    def __init__(self, fn: Callable[..., Any] | None, words: jax.Array, row_offset: Any) -> None:
        self.words = words
        self.row_offset = jnp.asarray(row_offset, _U32)
        self._seen: dict[str, int] = {}
        super().__init__(fn)

    def __enter__(self) -> Any:
        self._seen = {}
        return super().__enter__()

    def process_message(self, msg: dict[str, Any]) -> None:  # noqa: D102
        needs_key = (
            msg["type"] == "sample"
            and not msg["is_observed"]
            and msg["kwargs"].get("rng_key") is None
        ) or msg["type"] in ("prng_key", "plate", "control_flow")
        if not needs_key or msg.get("value") is not None:
            return
        name = str(msg.get("name") or msg["type"])
        count = self._seen.get(name, 0)
        self._seen[name] = count + 1
        w1, w2 = threefry2x32(self.words[0], self.words[1], _TAG_SITE, name_tag(name))
        if count:
            w1, w2 = threefry2x32(w1, w2, _TAG_FOLD, np.uint32(count))
        data = jnp.stack([w1, w2, self.row_offset])
        msg["kwargs"]["rng_key"] = jax.random.wrap_key_data(data, impl=ROW_KEY_IMPL)
        if msg["type"] == "sample" and row_sampled(msg["fn"]):
            sample_shape = tuple(msg["kwargs"].get("sample_shape", ()))
            msg["value"] = row_sample(msg["fn"], data[:2], self.row_offset, sample_shape)
