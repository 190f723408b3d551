from __future__ import annotations

import math

import numpy as np
import pytest

from dopax.effects import hdi, summarize_draws

Z_94 = 1.8807936081512509  # standard normal quantile at 0.97


class TestHdi:
    def test_normal_matches_central_interval(self) -> None:
        rng = np.random.default_rng(0)
        draws = rng.normal(2.0, 3.0, size=200_000)
        low, high = hdi(draws, prob=0.94)
        assert low == pytest.approx(2.0 - Z_94 * 3.0, abs=0.05)
        assert high == pytest.approx(2.0 + Z_94 * 3.0, abs=0.05)

    def test_exponential_starts_at_minimum(self) -> None:
        rng = np.random.default_rng(1)
        draws = rng.exponential(1.0, size=200_000)
        low, high = hdi(draws, prob=0.94)
        assert low == pytest.approx(draws.min(), abs=1e-3)
        assert high == pytest.approx(-math.log(0.06), abs=0.03)

    @pytest.mark.parametrize(
        ("draws", "prob", "expected"),
        [
            # n=5, window of floor(0.6*5)+1 = 4 draws: widths 7-0=7, 8-5=3.
            ([8.0, 0.0, 6.0, 5.0, 7.0], 0.6, (5.0, 8.0)),
            # n=6, window of 4 draws: widths 2, 7, 17.5.
            ([20.0, 2.0, 1.0, 9.0, 3.0, 2.5], 0.5, (1.0, 3.0)),
            # ties go to the first (lowest) window.
            ([0.0, 1.0, 2.0, 3.0], 0.5, (0.0, 2.0)),
            # a single draw gives a degenerate interval.
            ([4.0], 0.94, (4.0, 4.0)),
        ],
    )
    def test_hand_computed(
        self, draws: list[float], prob: float, expected: tuple[float, float]
    ) -> None:
        np.testing.assert_array_equal(hdi(np.array(draws), prob=prob), expected)

    def test_axis_and_shape(self) -> None:
        rng = np.random.default_rng(2)
        draws = rng.normal(size=(3, 400, 2))
        out = hdi(draws, prob=0.8, axis=1)
        assert out.shape == (3, 2, 2)
        for i in range(3):
            for j in range(2):
                np.testing.assert_array_equal(out[i, j], hdi(draws[i, :, j], prob=0.8))
        np.testing.assert_array_equal(hdi(draws, prob=0.8, axis=-2), out)
        assert np.all(out[..., 0] <= out[..., 1])

    @pytest.mark.parametrize("prob", [0.0, 1.0, -0.5, 1.5, float("nan")])
    def test_invalid_prob(self, prob: float) -> None:
        with pytest.raises(ValueError, match="prob"):
            hdi(np.arange(10.0), prob=prob)

    def test_empty(self) -> None:
        with pytest.raises(ValueError, match="empty"):
            hdi(np.empty((0, 3)), axis=0)


class TestSummarizeDraws:
    def test_values(self) -> None:
        draws = np.array([-1.0, 1.0, 2.0, 3.0, 5.0])
        out = summarize_draws(draws, prob=0.6)
        assert set(out) == {"mean", "sd", "hdi_low", "hdi_high", "p_positive"}
        assert out["mean"] == pytest.approx(2.0)
        assert out["sd"] == pytest.approx(np.std(draws, ddof=1))
        # window of floor(0.6*5)+1 = 4 draws: widths 4, 4 -> first.
        assert (out["hdi_low"], out["hdi_high"]) == (-1.0, 3.0)
        assert out["p_positive"] == pytest.approx(0.8)
        assert all(isinstance(v, float) for v in out.values())

    def test_zero_is_not_positive(self) -> None:
        assert summarize_draws(np.zeros(4))["p_positive"] == 0.0

    def test_normal(self) -> None:
        rng = np.random.default_rng(3)
        out = summarize_draws(rng.normal(0.5, 1.0, size=100_000))
        assert out["mean"] == pytest.approx(0.5, abs=0.02)
        assert out["sd"] == pytest.approx(1.0, abs=0.02)
        assert out["p_positive"] == pytest.approx(0.6915, abs=0.01)

    def test_rejects_bad_input(self) -> None:
        with pytest.raises(ValueError, match="one-dimensional"):
            summarize_draws(np.zeros((2, 3)))
        with pytest.raises(ValueError, match="empty"):
            summarize_draws(np.array([]))
        with pytest.raises(ValueError, match="prob"):
            summarize_draws(np.arange(3.0), prob=1.2)


def test_nan_draws_give_no_summary_that_reads_as_a_number() -> None:
    # a NaN is not > 0: without care P(> 0) of [NaN, -1, NaN] reads 0.0
    out = summarize_draws(np.array([np.nan, -1.0, np.nan, 2.0]))
    assert all(np.isnan(v) for v in out.values()), out
    finite = summarize_draws(np.array([0.5, -1.0, 2.0, 3.0]))
    assert finite["p_positive"] == 0.75
