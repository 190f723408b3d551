"""What a first effect analysis shows: group order and counts, scalar scenarios, discrete
outcomes, readable plots, ROPE and equal-tailed summaries."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
import pytest
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.optim import Adam

from dopax import ImpactModel
from dopax.effects import EffectResult
from dopax.effects.scenarios import group_codes

N, D = 48, 30


def kernel(X: Any, t: Any, y: Any = None) -> None:
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]))
    tau = numpyro.sample("tau", dist.Normal(0.0, 1.0))
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(X @ beta + tau * t, 0.5), obs=y)


def binary(X: Any, t: Any, y: Any = None) -> None:
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]))
    tau = numpyro.sample("tau", dist.Normal(0.0, 1.0))
    with numpyro.plate("obs", X.shape[0]):
        p = numpyro.deterministic("p", jax.nn.sigmoid(X @ beta + tau * t))
        numpyro.sample("y", dist.Bernoulli(probs=p), obs=y)


def _model(k: Any) -> ImpactModel:
    rng = np.random.default_rng(0)
    model = ImpactModel(k, jax.random.key(0), SVI(k, AutoNormal(k), Adam(0.1), Trace_ELBO()))
    return model.set_posterior_sample(
        {
            "beta": rng.normal(size=(D, 2)).astype(np.float32),
            "tau": (1.0 + 0.1 * rng.normal(size=D)).astype(np.float32),
        }
    )


X = np.random.default_rng(1).normal(size=(N, 2)).astype(np.float32)
T = np.zeros(N, np.float32)
SCENARIOS = {"treated": {"t": 1.0}, "control": {"t": 0.0}}


@pytest.fixture(scope="module")
def by_decile() -> EffectResult:
    deciles = np.array([f"decile {i % 10 + 1}" for i in range(N)])
    return _model(kernel).compare_scenarios(
        X, SCENARIOS, baseline="control", t=T, by=deciles, progress=False
    )


# ------------------------------------------------------------------ groups
def test_groups_keep_their_natural_order_and_counts(by_decile: EffectResult) -> None:
    assert by_decile.groups == tuple(f"decile {i}" for i in range(1, 11))
    counts = by_decile.group_counts
    assert counts is not None and sum(counts.values()) == N and counts["decile 1"] == 5
    table = by_decile.summary()
    assert table.loc[("ate_by_group", "treated - control | decile 10"), "n"] == 4
    assert table.loc[("ate", "treated - control"), "n"] == N


def test_group_labels_of_every_kind() -> None:
    codes, labels = group_codes(pd.Categorical(["lo", "hi", "mid"], ["lo", "mid", "hi"]), 3)
    assert list(labels) == ["lo", "mid", "hi"] and list(codes) == [0, 2, 1]
    codes, labels = group_codes(pd.Series(["b", "a"], dtype="category"), 2)
    assert list(labels) == ["a", "b"]
    _, labels = group_codes(np.array([10, 2, 1]), 3)
    assert list(labels) == [1, 2, 10]
    _, labels = group_codes(["item 10", "item 9", "Item 1"], 3)
    assert list(labels) == ["Item 1", "item 9", "item 10"]
    for missing in (["a", None, "b"], [1.0, np.nan, 2.0], pd.Series(["a", pd.NA, "b"])):
        with pytest.raises(ValueError, match=r"`by` has 1 missing label\(s\) \(first at row 1\)"):
            group_codes(missing, 3)
    with pytest.raises(ValueError, match="missing"):
        group_codes(pd.Categorical(["a", None, "b"]), 3)


# ------------------------------------------------------------------ scenarios and outcomes
def test_scalar_scenario_values_apply_to_every_row(by_decile: EffectResult) -> None:
    model = _model(kernel)
    key = jax.random.key(7)
    arrays = {"treated": {"t": np.ones(N, np.float32)}, "control": {"t": np.zeros(N, np.float32)}}
    a = model.compare_scenarios(X, SCENARIOS, baseline="control", t=T, rng_key=key, progress=False)
    b = model.compare_scenarios(X, arrays, baseline="control", t=T, rng_key=key, progress=False)
    np.testing.assert_array_equal(a.tree["draws"]["ate"].values, b.tree["draws"]["ate"].values)


def test_discrete_outcome_warns_and_names_the_expectation_site() -> None:
    model = _model(binary)
    with pytest.warns(UserWarning, match=r"discrete .*\['p'\]"):
        rows = model.compare_scenarios(X, SCENARIOS, baseline="control", t=T, progress=False)
    lower = rows.tree["rows"]["effect_lower"].values
    assert np.array_equal(lower, np.round(lower))  # whole numbers, as the warning says
    expected = model.compare_scenarios(
        X, SCENARIOS, baseline="control", t=T, site="p", progress=False
    )
    assert not np.array_equal(
        expected.tree["rows"]["effect_lower"].values,
        np.round(expected.tree["rows"]["effect_lower"].values),
    )


# ------------------------------------------------------------------ summaries
def test_summary_rope_and_equal_tailed_interval(by_decile: EffectResult) -> None:
    ate = by_decile.ate_draws()["treated - control"]
    table = by_decile.summary(prob=0.9, interval="both", rope=(0.9, 1.1))
    row = table.loc[("ate", "treated - control")]
    assert row["p_rope"] == pytest.approx(np.mean((ate >= 0.9) & (ate <= 1.1)))
    assert row["eti_low"] == pytest.approx(np.quantile(ate, 0.05))
    assert row["eti_high"] == pytest.approx(np.quantile(ate, 0.95))
    assert {"hdi_low", "hdi_high"} <= set(table.columns)
    assert "hdi_low" not in by_decile.summary(interval="eti").columns
    with pytest.raises(ValueError, match="rope"):
        by_decile.summary(rope=(1.0, 0.0))
    with pytest.raises(ValueError, match="interval"):
        by_decile.summary(interval="central")


# ------------------------------------------------------------------ plots
def test_plot_reads_well(by_decile: EffectResult) -> None:
    fig = by_decile.plot(label="Change in earnings", units="USD")
    ate_ax, group_ax = fig.axes
    assert ate_ax.get_xlabel() == "Change in earnings (USD)"
    assert ate_ax.get_xlim() == group_ax.get_xlim()
    ticks = [t.get_text() for t in group_ax.get_yticklabels()]
    assert ticks[0] == "decile 1 (n=5)" and ticks[-1] == "decile 10 (n=4)"
    fig.canvas.draw()
    legend = ate_ax.get_legend()
    assert legend is not None
    box, data = legend.get_window_extent(), ate_ax.get_window_extent()
    assert box.x0 >= data.x1  # beside the data, not over it
    # few draws, few bins
    assert len(ate_ax.patches) < 10


def test_histogram_bins_follow_the_draw_count() -> None:
    from dopax.effects.plot import histogram_bins

    rng = np.random.default_rng(0)
    few = histogram_bins([rng.normal(size=30), rng.normal(2.0, size=30)])
    many = histogram_bins([rng.normal(size=20_000)])
    assert 5 <= len(few) - 1 < 10 < len(many) - 1 <= 60
