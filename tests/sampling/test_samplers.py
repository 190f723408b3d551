"""Exactness of dopax's row-keyed samplers.

Each family is drawn for a vector of parameter values (very small and very
large rates and counts, shapes below 1, degrees of freedom below 2) and
compared, value by value, with

* the exact law (scipy): Kolmogorov-Smirnov for continuous laws, a
  chi-square test over bins of at least 20 expected counts for discrete ones;
* NumPyro's own sampler, by a two-sample Kolmogorov-Smirnov test, where that
  sampler is itself accurate (in float32 it is not for Poisson rates of 1e5
  and more, nor for binomials with large counts: both fail the exact-law test
  by p < 1e-30 at these sample sizes);
* the known mean and variance, by z-tests.

Every draw uses fixed keys, so the tests are deterministic. Each single test
runs at level ``ALPHA = 1e-6`` (two-sided z-tests at ``|z| < 5``); with about
300 tests in this file, the chance that a correct sampler fails any of them
on some other set of keys is below 1e-3 (Bonferroni).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers

from dopax.sampling import samplers, variates
from dopax.sampling.rng import RowKeySeed, draw_words

st = pytest.importorskip("scipy.stats")
special = pytest.importorskip("scipy.special")

ALPHA = 1e-6
Z = 5.0
N = 50_000  # draws per parameter value from dopax
N_REF = 20_000  # draws per parameter value from NumPyro
HAS_HURDLE = hasattr(dist, "HurdlePoisson")  # NumPyro 0.21 and later


def ours(make: Callable[..., Any], *params: Any, n: int = N, seed: int = 0) -> np.ndarray:
    """``n`` draws (leading axis: rows) of ``make(*params)`` from dopax's row-keyed streams.

    Run eagerly: each sampler's compiled core is then shared between tests.
    """
    words = jnp.asarray([seed, 0x5EED], jnp.uint32)
    return np.asarray(samplers.row_sample(make(*params), words, 0, (n,)))


def reference(d: Any, n: int = N_REF, seed: int = 1) -> np.ndarray:
    return np.asarray(d.sample(jax.random.key(seed), (n,)))


def ks_exact(x: np.ndarray, cdf: Callable[[np.ndarray], np.ndarray]) -> float:
    return float(st.kstest(x.astype(np.float64), cdf).pvalue)


def chi2_exact(x: np.ndarray, pmf: Callable[[np.ndarray], np.ndarray], support_max: int) -> float:
    """Chi-square over consecutive values, merged into bins of >= 20 expected counts."""
    k = np.arange(support_max + 1)
    expected = pmf(k) * x.size
    observed = np.bincount(x.astype(np.int64), minlength=support_max + 1)[: support_max + 1]
    obs_bins, exp_bins = [], []
    acc_o = acc_e = 0.0
    for o, e in zip(observed, expected, strict=True):
        acc_o += o
        acc_e += e
        if acc_e >= 20:
            obs_bins.append(acc_o)
            exp_bins.append(acc_e)
            acc_o = acc_e = 0.0
    # what remains (and everything above support_max) joins the last bin
    tail = x.size - sum(obs_bins)
    obs_bins[-1] += tail
    exp_bins[-1] += x.size - sum(exp_bins)
    if len(obs_bins) < 2:
        return 1.0
    return float(st.chisquare(obs_bins, exp_bins).pvalue)


def check_moments(x: np.ndarray, mean: float, var: float | None, label: str) -> None:
    x = x.astype(np.float64)
    n = x.size
    sd = math.sqrt(var) if var is not None else x.std()
    z_mean = (x.mean() - mean) / (sd / math.sqrt(n))
    assert abs(z_mean) < Z, f"{label}: mean {x.mean()} vs {mean} (z = {z_mean:.2f})"
    if var is not None and var > 0:
        m4 = np.mean((x - x.mean()) ** 4)
        se = math.sqrt(max(m4 - x.var() ** 2, 1e-300) / n)
        z_var = (x.var() - var) / se
        assert abs(z_var) < Z, f"{label}: variance {x.var()} vs {var} (z = {z_var:.2f})"


def check_two_sample(a: np.ndarray, b: np.ndarray, label: str) -> None:
    p = st.ks_2samp(a.astype(np.float64), b.astype(np.float64)).pvalue
    assert p > ALPHA, f"{label}: dopax and NumPyro differ (KS p = {p:.3g})"


# --------------------------------------------------------------------------- continuous


def test_gamma() -> None:
    conc = np.array([0.2, 0.5, 0.999, 1.0, 1.5, 7.0, 1e3, 1e6], np.float32)
    rate = np.array([1.0, 2.0, 1.0, 0.5, 1.0, 3.0, 1.0, 1e-3], np.float32)
    x, ref = ours(dist.Gamma, conc, rate), reference(dist.Gamma(conc, rate))
    assert x.dtype == ref.dtype == np.float32 and x.shape == (N, conc.size)
    for i, (a, r) in enumerate(zip(conc, rate, strict=True)):
        law = st.gamma(float(a), scale=1.0 / float(r))
        label = f"Gamma({a}, {r})"
        assert ks_exact(x[:, i], law.cdf) > ALPHA, label
        check_two_sample(x[:, i], ref[:, i], label)
        check_moments(x[:, i], law.mean(), law.var(), label)


def test_gamma_log_space_for_tiny_shapes() -> None:
    # Shapes far below 1 underflow in float32 (as NumPyro's do): the sampler
    # works in log space, and log G is compared with its exact law.
    conc = np.array([1e-3, 0.01, 0.1], np.float32)
    src = samplers._Source(jnp.uint32(3), jnp.uint32(4), jnp.uint32(0))
    log_g = np.asarray(samplers._log_gamma(src, jnp.asarray(conc), (N, 3)))
    for i, a in enumerate(conc.astype(np.float64)):

        def cdf(t: np.ndarray, a: float = a) -> np.ndarray:
            # P(log G <= t) = P(a, e^t); for tiny e^t, e^(a t) / Gamma(a + 1)
            tiny = np.exp(a * t - special.gammaln(a + 1.0))
            return np.where(t < -50, tiny, special.gammainc(a, np.exp(np.minimum(t, 50))))

        assert ks_exact(log_g[:, i], cdf) > ALPHA, f"log Gamma({a})"


def test_student_t() -> None:
    df = np.array([0.3, 0.9, 1.5, 2.5, 5.0, 30.0, 1e4], np.float32)
    x, ref = ours(dist.StudentT, df, 1.0, 2.0), reference(dist.StudentT(df, 1.0, 2.0))
    assert x.dtype == ref.dtype
    for i, v in enumerate(df):
        law = st.t(float(v), loc=1.0, scale=2.0)
        label = f"StudentT({v})"
        assert ks_exact(x[:, i], law.cdf) > ALPHA, label
        check_two_sample(x[:, i], ref[:, i], label)
        if v > 4:
            check_moments(x[:, i], law.mean(), law.var(), label)


def test_beta() -> None:
    c1 = np.array([0.5, 1.0, 2.0, 50.0, 0.7, 1e3, 0.05], np.float32)
    c0 = np.array([0.5, 1.0, 5.0, 0.6, 30.0, 2e3, 0.1], np.float32)
    x, ref = ours(dist.Beta, c1, c0), reference(dist.Beta(c1, c0))
    for i, (a, b) in enumerate(zip(c1, c0, strict=True)):
        label = f"Beta({a}, {b})"
        check_two_sample(x[:, i], ref[:, i], label)
        if a < 0.1:
            # tiny concentrations pile up at float32's ends, clipped as NumPyro clips them
            continue
        law = st.beta(float(a), float(b))
        assert ks_exact(x[:, i], law.cdf) > ALPHA, label
        check_moments(x[:, i], law.mean(), law.var(), label)


def test_dirichlet_marginals() -> None:
    conc = np.array([[0.3, 1.0, 4.0], [20.0, 0.5, 2.0]], np.float32)
    x, ref = ours(dist.Dirichlet, conc), reference(dist.Dirichlet(conc))
    assert x.shape == (N, 2, 3)
    np.testing.assert_allclose(x.sum(-1), 1.0, atol=1e-5)
    for i in range(2):
        total = float(conc[i].sum())
        for j in range(3):
            a = float(conc[i, j])
            law = st.beta(a, total - a)
            label = f"Dirichlet({conc[i]})[{j}]"
            assert ks_exact(x[:, i, j], law.cdf) > ALPHA, label
            check_two_sample(x[:, i, j], ref[:, i, j], label)
            check_moments(x[:, i, j], law.mean(), law.var(), label)


def test_inverse_gamma_through_its_transform() -> None:
    x = ours(dist.InverseGamma, np.float32(3.0), np.float32(2.0))
    assert ks_exact(x, st.invgamma(3.0, scale=2.0).cdf) > ALPHA


# --------------------------------------------------------------------------- discrete


def test_poisson() -> None:
    rate = np.array([1e-3, 0.5, 3.0, 9.99, 10.0, 10.5, 57.0, 1e3, 1e5, 1e6], np.float32)
    x = ours(dist.Poisson, rate)
    ref = reference(dist.Poisson(rate[rate <= 1e4]))
    assert x.dtype == ref.dtype and x.shape == (N, rate.size)
    for i, r in enumerate(rate.astype(np.float64)):
        law = st.poisson(r)
        label = f"Poisson({r})"
        top = int(law.ppf(1 - 1e-12)) + 1
        assert chi2_exact(x[:, i], law.pmf, top) > ALPHA, label
        if i < ref.shape[1]:
            check_two_sample(x[:, i], ref[:, i], label)
        check_moments(x[:, i], r, r, label)


def test_binomial() -> None:
    n = np.array([1, 10, 39, 40, 1000, 10**6, 10**7, 100, 100], np.int32)
    p = np.array([0.3, 0.999, 0.25, 0.25, 0.5, 1e-5, 0.01, 0.0, 1.0], np.float32)
    x = ours(dist.Binomial, n, p)
    assert x.dtype == np.int32
    small = n <= 1000
    ref = reference(dist.Binomial(n[small], p[small]), n=2_000)
    for i, (ni, pi) in enumerate(zip(n.tolist(), p.astype(np.float64), strict=True)):
        law = st.binom(ni, pi)
        label = f"Binomial({ni}, {pi})"
        if pi in (0.0, 1.0):
            assert np.all(x[:, i] == ni * pi), label
            continue
        lo, hi = int(law.ppf(1e-12)), int(law.ppf(1 - 1e-12)) + 1
        shifted = x[:, i] - lo
        assert shifted.min() >= 0, label
        pmf = law.pmf
        assert chi2_exact(shifted, lambda k, lo=lo, pmf=pmf: pmf(k + lo), hi - lo) > ALPHA, label
        if small[i]:
            check_two_sample(x[:, i], ref[:, int(np.sum(small[:i]))], label)
        check_moments(x[:, i], law.mean(), law.var(), label)


def test_negative_binomial() -> None:
    mean = np.array([0.5, 3.0, 50.0, 1e4, 20.0], np.float32)
    conc = np.array([0.1, 2.0, 0.5, 100.0, 1e4], np.float32)
    x = ours(dist.NegativeBinomial2, mean, conc)
    ref = reference(dist.NegativeBinomial2(mean, conc))
    assert x.dtype == ref.dtype
    for i, (m, c) in enumerate(zip(mean.astype(np.float64), conc.astype(np.float64), strict=True)):
        law = st.nbinom(c, c / (c + m))
        label = f"NegativeBinomial2({m}, {c})"
        top = int(law.ppf(1 - 1e-12)) + 1
        assert chi2_exact(x[:, i], law.pmf, top) > ALPHA, label
        check_two_sample(x[:, i], ref[:, i], label)
        check_moments(x[:, i], law.mean(), law.var(), label)


def test_zero_inflated_poisson() -> None:
    gate = np.array([0.3, 0.9, 0.01], np.float32)
    rate = np.array([0.5, 20.0, 1e3], np.float32)
    x = ours(dist.ZeroInflatedPoisson, gate, rate)
    ref = reference(dist.ZeroInflatedPoisson(gate, rate))
    for i, (g, r) in enumerate(zip(gate.astype(np.float64), rate.astype(np.float64), strict=True)):

        def pmf(k: np.ndarray, g: float = g, r: float = r) -> np.ndarray:
            return (1 - g) * st.poisson(r).pmf(k) + g * (k == 0)

        label = f"ZeroInflatedPoisson({g}, {r})"
        top = int(st.poisson(r).ppf(1 - 1e-12)) + 1
        assert chi2_exact(x[:, i], pmf, top) > ALPHA, label
        check_two_sample(x[:, i], ref[:, i], label)
        check_moments(x[:, i], (1 - g) * r, (1 - g) * r * (1 + g * r), label)


def test_beta_binomial() -> None:
    c1 = np.array([0.5, 2.0, 30.0], np.float32)
    c0 = np.array([0.5, 5.0, 1.0], np.float32)
    n = np.array([10, 50, 1000], np.int32)
    x = ours(dist.BetaBinomial, c1, c0, n)
    ref = reference(dist.BetaBinomial(c1, c0, n), n=2_000)
    assert x.dtype == ref.dtype
    for i in range(3):
        law = st.betabinom(int(n[i]), float(c1[i]), float(c0[i]))
        label = f"BetaBinomial({c1[i]}, {c0[i]}, {n[i]})"
        assert chi2_exact(x[:, i], law.pmf, int(n[i])) > ALPHA, label
        check_two_sample(x[:, i], ref[:, i], label)
        check_moments(x[:, i], law.mean(), law.var(), label)


def categorical_logits(logits: Any) -> Any:
    return dist.Categorical(logits=logits)


def categorical_probs(probs: Any) -> Any:
    return dist.Categorical(probs=probs)


def test_categorical() -> None:
    probs = np.array([[0.1, 0.2, 0.3, 0.4], [1e-4, 0.5, 0.4999, 0.0]], np.float32)
    x = ours(categorical_logits, np.log(probs + 1e-30))
    ref = reference(dist.Categorical(probs=probs))
    assert x.dtype == ref.dtype and x.shape == (N, 2)
    for i in range(2):
        p = probs[i].astype(np.float64) / probs[i].sum()
        assert chi2_exact(x[:, i], lambda k, p=p: p[k], 3) > ALPHA
        check_two_sample(x[:, i], ref[:, i], f"Categorical({p})")
    # many categories (cumulative sums instead of unrolled ones)
    many = np.arange(1, 21, dtype=np.float64) ** 2
    p = many / many.sum()
    x = ours(categorical_probs, p.astype(np.float32))
    assert chi2_exact(x, lambda k: p[k], 19) > ALPHA


def poisson_mixture(probs: Any, rates: Any) -> Any:
    return dist.MixtureSameFamily(dist.Categorical(probs=probs), dist.Poisson(rates))


def normal_mixture(probs: Any, locs: Any) -> Any:
    components = [dist.Normal(locs[0], 1.0), dist.Normal(locs[1], 0.5)]
    return dist.MixtureGeneral(dist.Categorical(probs=probs), components)


@pytest.mark.slow
def test_mixtures_hurdles_and_beta_negative_binomial() -> None:
    probs = np.array([0.3, 0.7], np.float32)
    rates = np.array([1.0, 25.0], np.float32)
    locs = np.array([-2.0, 1.0], np.float32)
    cases: list[tuple[str, Any, Any, Callable[[np.ndarray], np.ndarray], int | None]] = [
        (
            "Poisson mixture",
            ours(poisson_mixture, probs, rates),
            poisson_mixture(probs, rates),
            lambda k: 0.3 * st.poisson(1.0).pmf(k) + 0.7 * st.poisson(25.0).pmf(k),
            80,
        ),
        (
            "normal mixture",
            ours(normal_mixture, probs, locs),
            normal_mixture(probs, locs),
            lambda x: 0.3 * st.norm(-2.0, 1.0).cdf(x) + 0.7 * st.norm(1.0, 0.5).cdf(x),
            None,
        ),
        (
            "BetaNegativeBinomial",
            ours(dist.BetaNegativeBinomial, np.float32(6.0), np.float32(2.0), np.float32(3.0)),
            dist.BetaNegativeBinomial(np.float32(6.0), np.float32(2.0), np.float32(3.0)),
            st.betanbinom(3, 2.0, 6.0).pmf,  # scipy counts the other outcome
            400,
        ),
    ]
    if HAS_HURDLE:  # NumPyro 0.21 and later
        cases.append(
            (
                "HurdlePoisson",
                ours(dist.HurdlePoisson, np.float32(0.4), np.float32(0.7)),
                dist.HurdlePoisson(np.float32(0.4), np.float32(0.7)),
                lambda k: np.where(
                    k == 0, 0.4, 0.6 * st.poisson(0.7).pmf(k) / (1 - math.exp(-0.7))
                ),
                30,
            )
        )
    for label, x, d, law, top in cases:
        if top is None:
            assert ks_exact(x, law) > ALPHA, label
        else:
            assert chi2_exact(x, law, top) > ALPHA, label
        check_two_sample(x, reference(d), label)


# --------------------------------------------------------------------------- mechanics


def test_first_accepted_does_not_depend_on_tiles() -> None:
    """A rejection sampler returns each element's first accepted proposal, whatever the tiles."""

    def propose(m: Any, k1: Any, k2: Any, hi: Any, lo: Any, p: Any) -> Any:
        u, v = variates._uniforms(k1, k2, m, hi, lo, jnp.float32)
        return v + m, u < p  # value records the proposal index that was taken

    size = 1_000
    p = jnp.where(jnp.arange(size) % 2 == 0, 0.05, 0.5).astype(jnp.float32)
    hi = jnp.arange(size, dtype=jnp.uint32)
    lo = jnp.zeros((1,), jnp.uint32)
    args = (jnp.uint32(1), jnp.uint32(2), hi, lo, p)
    whole = np.asarray(variates._first_accepted(propose, args))
    # 16 tiles, the last one overlapping
    tiled = np.asarray(variates._first_accepted(propose, args, tile_size=64))
    np.testing.assert_array_equal(whole, tiled)
    # known answer: the first index m with u_m < p, from all proposals at once
    m = jnp.arange(400)[:, None]
    uniforms = jax.jit(lambda m: variates._uniforms(1, 2, m, hi, lo, jnp.float32))
    u, v = (np.asarray(a) for a in uniforms(m))
    first = np.argmax(u < np.asarray(p), axis=0)
    expected = v[first, np.arange(size)] + first
    np.testing.assert_array_equal(whole, expected.astype(np.float32))
    assert np.floor(whole).max() > 100  # some elements needed many proposals


def family_kernel(eta: Any) -> None:
    # (the likelihoods of the benchmark are checked through the engine in
    # tests/streaming/test_likelihoods.py)
    n = eta.shape[0]
    with numpyro.plate("rows", n):
        numpyro.sample("gamma3", dist.Gamma(jnp.exp(eta)[:, None] * jnp.ones(3)).to_event(1))
        numpyro.sample("binomial", dist.Binomial(60, jax.nn.sigmoid(eta)))
        numpyro.sample("dirichlet", dist.Dirichlet(jnp.exp(jnp.stack([eta, -eta, eta], -1))))
        numpyro.sample("inverse_gamma", dist.InverseGamma(jnp.exp(eta), 1.0))
        numpyro.sample("nb_probs", dist.NegativeBinomialProbs(3.0, jax.nn.sigmoid(eta)))
        numpyro.sample("beta_proportion", dist.BetaProportion(jax.nn.sigmoid(eta), 5.0))
        if HAS_HURDLE:
            numpyro.sample("hurdle", dist.HurdlePoisson(0.3, jnp.exp(eta)))
        numpyro.sample("beta_negative_binomial", dist.BetaNegativeBinomial(5.0, 2.0, jnp.exp(eta)))
        mixing = dist.Categorical(probs=jnp.array([0.4, 0.6]))
        rates = jnp.exp(eta)[:, None] * jnp.array([1.0, 10.0])
        numpyro.sample("poisson_mixture", dist.MixtureSameFamily(mixing, dist.Poisson(rates)))
    with numpyro.plate("rows2", n, dim=-2), numpyro.plate("cols", 2, dim=-1):
        numpyro.sample("gamma_2d", dist.Gamma(jnp.exp(eta)[:, None] * jnp.ones(2)))


@functools.cache
def _family_fn() -> Callable[..., Any]:
    def run(eta: jax.Array, offset: jax.Array) -> dict[str, jax.Array]:
        words = draw_words(jax.random.key(7), 0)
        tr = handlers.trace(RowKeySeed(family_kernel, words, offset)).get_trace(eta)
        return {k: v["value"] for k, v in tr.items() if v["type"] == "sample"}

    return jax.jit(run)


def family_trace(eta: np.ndarray, offset: int) -> dict[str, np.ndarray]:
    out = _family_fn()(jnp.asarray(eta), jnp.uint32(offset))
    return {k: np.asarray(v) for k, v in out.items()}


def test_every_family_draws_rows_from_their_own_streams() -> None:
    """A row's values depend only on its parameters and its global index."""
    eta = np.linspace(-2.0, 2.0, 16, dtype=np.float32)
    whole = family_trace(eta[:10], 0)
    # rows 6..9 again, now first in a batch that starts at row 6
    part = family_trace(eta[6:], 6)
    assert len(whole) == 10
    for name, value in whole.items():
        np.testing.assert_array_equal(value[6:], part[name][:4], err_msg=name)
        # rows and elements get distinct numbers
        if value.dtype.kind == "f":
            assert np.unique(value).size > value.size // 2, name


def test_dtypes_and_shapes_match_numpyro() -> None:
    eta = np.linspace(-2.0, 2.0, 10, dtype=np.float32)

    def numpyro_values(e: jax.Array) -> dict[str, jax.Array]:
        tr = handlers.trace(handlers.seed(family_kernel, 0)).get_trace(e)
        return {k: v["value"] for k, v in tr.items() if v["type"] == "sample"}

    ref = jax.eval_shape(numpyro_values, jnp.asarray(eta))  # abstract: nothing runs
    mine = family_trace(eta, 0)
    assert set(ref) == set(mine)
    for name, value in ref.items():
        assert (mine[name].shape, mine[name].dtype) == (value.shape, value.dtype), name
