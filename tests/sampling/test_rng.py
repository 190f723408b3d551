import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers

from dopax.sampling.rng import RowKeySeed, draw_words


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
