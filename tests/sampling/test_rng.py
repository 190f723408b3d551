from typing import Any

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax.extend import random as jex_random
from numpyro import handlers

from dopax.exceptions import KernelValidationError
from dopax.sampling.probe import probe_sites
from dopax.sampling.rng import ROW_KEY_IMPL, RowKeySeed, draw_words, threefry2x32


def kernel(n: int) -> None:
    with numpyro.plate("rows", n):
        numpyro.sample("normal", dist.Normal(0.0, 1.0))
        numpyro.sample("gamma", dist.Gamma(2.0))
        numpyro.sample("bern", dist.Bernoulli(0.3))
        numpyro.sample("mvn", dist.MultivariateNormal(np.zeros(3), np.eye(3)))


def run(n: int, offset: int, draw: int = 0) -> dict[str, np.ndarray]:
    words = draw_words(jax.random.key(7), draw)
    tr = handlers.trace(RowKeySeed(kernel, words, offset)).get_trace(n)
    return {k: np.asarray(v["value"]) for k, v in tr.items() if v["type"] == "sample"}


@pytest.mark.parametrize("site", ["normal", "gamma", "bern", "mvn"])
def test_row_values_do_not_depend_on_the_batch(site: str) -> None:
    whole = run(10, 0)[site]
    part = run(4, 6)[site]
    np.testing.assert_array_equal(whole[6:], part)


def test_draws_and_sites_get_distinct_numbers() -> None:
    a, b = run(1000, 0, draw=0), run(1000, 0, draw=1)
    assert abs(np.corrcoef(a["normal"], b["normal"])[0, 1]) < 0.1
    assert abs(np.corrcoef(a["normal"], a["mvn"][:, 0])[0, 1]) < 0.1
    # standard normal moments
    assert abs(a["normal"].mean()) < 0.1
    assert abs(a["normal"].std() - 1.0) < 0.1
    assert abs(a["bern"].mean() - 0.3) < 0.05


def test_site_keys_follow_names_not_order() -> None:
    def one(n: int) -> None:
        with numpyro.plate("rows", n):
            numpyro.sample("normal", dist.Normal(0.0, 1.0))

    words = draw_words(jax.random.key(7), 0)
    alone = handlers.trace(RowKeySeed(one, words, 0)).get_trace(10)["normal"]["value"]
    np.testing.assert_array_equal(np.asarray(alone), run(10, 0)["normal"])


def test_poisson_sites_are_drawn_from_row_keys() -> None:
    def counts(n: int) -> None:
        with numpyro.plate("rows", n):
            numpyro.sample("normal", dist.Normal(0.0, 1.0))
            numpyro.sample("count", dist.Poisson(3.0))

    words = draw_words(jax.random.key(7), 0)
    tr = handlers.trace(RowKeySeed(counts, words, 0)).get_trace(2000)
    assert jax.random.key_impl(tr["count"]["kwargs"]["rng_key"]) == ROW_KEY_IMPL
    value = np.asarray(tr["count"]["value"])
    assert value.shape == (2000,) and abs(value.mean() - 3.0) < 0.2
    part = handlers.trace(RowKeySeed(counts, words, 1500)).get_trace(500)
    np.testing.assert_array_equal(np.asarray(part["count"]["value"]), value[1500:])
    # the other site keeps its row-offset key and its values
    np.testing.assert_array_equal(np.asarray(tr["normal"]["value"]), run(2000, 0)["normal"])


def test_threefry_matches_jax_primitive_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    for _ in range(3):
        k1, k2 = (np.uint32(v) for v in rng.integers(0, 2**32, size=2, dtype=np.uint64))
        c1 = rng.integers(0, 2**32, size=1000, dtype=np.uint64).astype(np.uint32)
        c2 = rng.integers(0, 2**32, size=1000, dtype=np.uint64).astype(np.uint32)
        ours = jax.jit(threefry2x32)(k1, k2, c1, c2)
        ref = jex_random.threefry2x32_p.bind(
            jax.numpy.uint32(k1), jax.numpy.uint32(k2), jax.numpy.asarray(c1), jax.numpy.asarray(c2)
        )
        np.testing.assert_array_equal(np.asarray(ours[0]), np.asarray(ref[0]))
        np.testing.assert_array_equal(np.asarray(ours[1]), np.asarray(ref[1]))
    # the published known-answer vector (Random123, threefry2x32_20, all-ones input)
    ones = np.uint32(0xFFFFFFFF)
    y = threefry2x32(ones, ones, np.array([ones]), np.array([ones]))
    assert (int(y[0][0]), int(y[1][0])) == (0x1CB996FC, 0xBB002BE7)


class _DefaultKeyOnly(dist.Distribution):
    """A distribution whose sampler calls ``jax.random.poisson`` itself."""

    support = dist.constraints.nonnegative_integer

    def __init__(self, rate: Any) -> None:
        self.rate = rate
        super().__init__(jax.numpy.shape(rate))

    def sample(self, key: Any, sample_shape: tuple[int, ...] = ()) -> Any:
        return jax.random.poisson(key, self.rate, sample_shape + self.batch_shape)


def test_a_sampler_that_refuses_row_keys_is_reported() -> None:
    def kernel(x: Any) -> None:
        with numpyro.plate("rows", x.shape[0]):
            numpyro.sample("count", _DefaultKeyOnly(x))

    with pytest.raises(KernelValidationError, match="default key type"):
        probe_sites(kernel, {"x": jax.numpy.ones(3)})
