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

Inside a ``scan`` (NumPyro's ``numpyro.contrib.control_flow.scan``), each
step's sites get keys derived from the scan's key and the step's index, with
the same row offset: a panel whose units are the rows and whose time steps
are scanned draws each unit's values whatever block the unit falls in.

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
from numpyro.primitives import Messenger

from dopax.sampling.row_keys import _TAG_FOLD, _TAG_SITE, _TAG_STEP, _U32, ROW_KEY_IMPL
from dopax.sampling.samplers import row_sample, row_sampled
from dopax.sampling.threefry import threefry2x32

__all__ = ["ROW_KEY_IMPL", "RowKeySeed", "draw_words", "name_tag", "threefry2x32"]


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
        if msg["type"] == "control_flow":
            msg["fn"] = _seeded_steps(msg["fn"], jnp.stack([w1, w2]), self.row_offset)
            return
        data = jnp.stack([w1, w2, self.row_offset])
        msg["kwargs"]["rng_key"] = jax.random.wrap_key_data(data, impl=ROW_KEY_IMPL)
        if msg["type"] == "sample" and row_sampled(msg["fn"]):
            sample_shape = tuple(msg["kwargs"].get("sample_shape", ()))
            msg["value"] = row_sample(msg["fn"], data[:2], self.row_offset, sample_shape)


def _seeded_steps(scan_fn: Callable[..., Any], words: jax.Array, row_offset: Any) -> Any:
    """Wrap NumPyro's scan so that each step runs under :class:`RowKeySeed`.

    NumPyro seeds a scan's steps by splitting one key, which would lose the
    row offset; instead step ``t`` runs with key words derived from the
    scan's words and ``t``, and the block's row offset.

    Args:
        scan_fn: The ``control_flow`` message's function (NumPyro's scan wrapper).
        words: The scan's two key words.
        row_offset: Global index of the block's first row.
    """

    def wrapped(f: Any, init: Any, xs: Any, length: Any, reverse: Any, **kwargs: Any) -> Any:
        kwargs["rng_key"] = None  # the steps are seeded here

        def body(carry: Any, x: Any) -> Any:
            step, inner = carry
            s1, s2 = threefry2x32(words[0], words[1], _TAG_STEP, step)
            with RowKeySeed(None, jnp.stack([s1, s2]), row_offset):
                inner, y = f(inner, x)
            return (step + jnp.uint32(1), inner), y

        start = (jnp.zeros((), _U32), init)
        (n, key, (_, carry)), out = scan_fn(body, start, xs, length, reverse, **kwargs)
        return (n, key, carry), out

    return wrapped
