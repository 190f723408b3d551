"""The calibration plot and PIT ECDF of a summary result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

from dopax.answers import pit_ecdf, pit_values, plot_calibration


@pytest.fixture(scope="module")
def summary(linear_fit: Any) -> Any:
    model, X, y = linear_fit
    return model.summarize(X, y, rng_key=jax.random.key(3), batch_size=100, progress=False)


def test_plot_calibration_draws_the_ecdf_and_the_histogram(summary: Any, tmp_path: Path) -> None:
    fig = plot_calibration(summary)
    ax = fig.axes[0]
    curve = pit_ecdf(summary)
    line = ax.get_lines()[0]
    np.testing.assert_allclose(line.get_ydata(), curve.ecdf - curve.grid)
    assert "400 observations" in ax.get_title()
    fig.savefig(tmp_path / "ecdf.png")
    assert (tmp_path / "ecdf.png").stat().st_size > 0
    fig = plot_calibration(summary["summary"]["y_pit"], kind="hist", bins=10)
    heights = [p.get_height() for p in fig.axes[0].containers[0]]
    assert len(heights) == 10 and sum(heights) == 400


def test_pit_ecdf_counts_chunk_by_chunk_and_tells_uniform_from_not(summary: Any) -> None:
    pit = np.asarray(pit_values(summary))
    curve = pit_ecdf(summary, points=11)
    np.testing.assert_allclose(curve.ecdf, [(pit <= g).mean() for g in curve.grid])
    rng = np.random.default_rng(0)
    uniform = pit_ecdf(rng.uniform(size=20_000), prob=0.99)
    assert uniform.within_band and uniform.band == pytest.approx(np.sqrt(np.log(200) / 40_000))
    too_narrow = pit_ecdf(rng.beta(0.5, 0.5, size=20_000))  # U-shaped PIT values
    assert not too_narrow.within_band


def test_a_result_without_pit_values_says_how_to_get_them(linear_fit: Any) -> None:
    model, X, _ = linear_fit
    tree = model.summarize(X[:20], store="memory", progress=False)
    with pytest.raises(ValueError, match=r"summarise with the observed output"):
        plot_calibration(tree)
    with pytest.raises(ValueError, match="`kind` must be 'ecdf' or 'hist'"):
        plot_calibration(np.zeros(3), kind="box")
