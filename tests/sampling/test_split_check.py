"""The planner's split check: which kernels keep rows apart, and why not."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from dopax.sampling.forward import PassSpec
from dopax.sampling.plan import _check_split

X = np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(6, 2)


def reason(kernel: Any) -> str | None:
    spec = PassSpec(kernel, (), ("y",))
    return _check_split(spec, 6, {"X": X}, {}, {}, {}, {})


def test_row_keyed_families_split() -> None:
    def kernel(X: Any) -> None:
        with numpyro.plate("obs", X.shape[0]):
            eta = X.sum(-1)
            rate = numpyro.sample("rate", dist.Gamma(jnp.exp(eta), 1.0))
            numpyro.sample("y", dist.NegativeBinomial2(rate + 1.0, 2.0))

    assert reason(kernel) is None


def test_a_sampler_that_ties_rows_is_named() -> None:
    def kernel(X: Any) -> None:
        with numpyro.plate("obs", X.shape[0]):
            numpyro.sample("y", dist.VonMises(X.sum(-1), 2.0))

    why = reason(kernel)
    assert why is not None and "'y' (VonMises)" in why and "its sampler" in why


def test_a_kernel_that_couples_rows_is_named() -> None:
    def kernel(X: Any) -> None:
        with numpyro.plate("obs", X.shape[0]):
            mu = numpyro.deterministic("mu", X.sum(-1) - X.sum(-1).mean())
            numpyro.sample("y", dist.Poisson(jnp.exp(mu)))

    why = reason(kernel)
    assert why is not None and "'mu'" in why and "couples rows" in why
