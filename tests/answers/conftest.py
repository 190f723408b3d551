"""Fitted models shared by the answer tests (fitted once per session)."""

from __future__ import annotations

from collections.abc import Iterator

import matplotlib
import numpy as np
import pytest

from answers.models import N_ROWS, counts, fit, linear, simulate
from dopax import ImpactModel

matplotlib.use("Agg")


@pytest.fixture(scope="session")
def linear_fit() -> tuple[ImpactModel, np.ndarray, np.ndarray]:
    X, y = simulate(N_ROWS)
    return fit(linear, X, y), X, y


@pytest.fixture(scope="session")
def counts_fit() -> tuple[ImpactModel, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(N_ROWS, 2)).astype(np.float32)
    y = rng.poisson(np.exp(0.3 + X @ np.array([0.5, -0.3]))).astype(np.int32)
    return fit(counts, X, y), X, y


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
