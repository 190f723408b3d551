from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from matplotlib.figure import Figure

from dopax.effects import EffectResult, summarize_draws

CHAINS, DRAWS = 2, 400
SCENARIOS = ["control", "treated", "double"]
CONTRASTS = ["treated - control", "double - control"]
GROUPS = ["a", "b", "c"]
TRUE_ATE = np.array([2.0, 4.0])
ATE_SD = 0.1
GROUP_SHIFT = np.array([-1.0, 0.0, 1.0])


def make_tree(*, by_group: bool = True, rows: bool = True, **attrs: object) -> xr.DataTree:
    rng = np.random.default_rng(0)
    base = 10.0 + 0.05 * rng.standard_normal((CHAINS, DRAWS))
    ate = TRUE_ATE + ATE_SD * rng.standard_normal((CHAINS, DRAWS, 2))
    mean = np.concatenate([base[..., None], base[..., None] + ate], axis=-1)
    draws = xr.Dataset(
        {
            "mean": (("chain", "draw", "scenario"), mean),
            # stored contrast-first to check that summaries do not rely on dim order
            "ate": (("contrast", "chain", "draw"), np.moveaxis(ate, -1, 0)),
            "relative": (("chain", "draw", "contrast"), ate / base[..., None]),
        },
        coords={
            "chain": np.arange(CHAINS),
            "draw": np.arange(DRAWS),
            "scenario": SCENARIOS,
            "contrast": CONTRASTS,
            "contrast_scenario": ("contrast", SCENARIOS[1:]),
        },
    )
    root_attrs: dict[str, object] = {"baseline": "control", "site": "y", **attrs}
    nodes: dict[str, xr.Dataset] = {"/": xr.Dataset(attrs=root_attrs), "draws": draws}
    if by_group:
        group_ate = ate[..., None] + GROUP_SHIFT
        group_mean = mean[..., None] + np.zeros(len(GROUPS))
        nodes["by_group"] = xr.Dataset(
            {
                "ate": (("chain", "draw", "contrast", "group"), group_ate),
                "mean": (("chain", "draw", "scenario", "group"), group_mean),
            },
            coords={"scenario": SCENARIOS, "contrast": CONTRASTS, "group": GROUPS},
        )
    if rows:
        effect = np.tile(TRUE_ATE[:, None], (1, 5))
        nodes["rows"] = xr.Dataset(
            {
                "effect_mean": (("contrast", "row"), effect),
                "effect_lower": (("contrast", "row"), effect - 0.2),
                "effect_upper": (("contrast", "row"), effect + 0.2),
            },
            coords={"contrast": CONTRASTS},
            attrs={"interval_prob": 0.9},
        )
    return xr.DataTree.from_dict(nodes)


@pytest.fixture
def result() -> EffectResult:
    return EffectResult(make_tree())


def test_properties(result: EffectResult) -> None:
    assert result.baseline == "control"
    assert result.site == "y"
    assert result.scenarios == tuple(SCENARIOS)
    assert result.contrasts == tuple(CONTRASTS)
    assert result.groups == tuple(GROUPS)
    assert result.hdi_prob == 0.94
    assert result.to_datatree() is result.tree
    text = repr(result)
    assert text.startswith("EffectResult(")
    assert "'control'" in text and "draws=800" in text and "rows=5" in text


def test_summary_layout(result: EffectResult) -> None:
    df = result.summary()
    assert list(df.columns) == ["mean", "sd", "hdi_low", "hdi_high", "p_positive"]
    assert df.index.names == ["kind", "name"]
    expected = (
        [("mean", s) for s in SCENARIOS]
        + [("ate", c) for c in CONTRASTS]
        + [("relative", c) for c in CONTRASTS]
        + [("ate_by_group", f"{c} | {g}") for c in CONTRASTS for g in GROUPS]
    )
    assert list(df.index) == expected
    assert df.attrs == {"hdi_prob": 0.94, "baseline": "control", "site": "y"}
    assert (df["hdi_low"] <= df["mean"]).all() and (df["mean"] <= df["hdi_high"]).all()


def test_summary_values(result: EffectResult) -> None:
    df = result.summary(prob=0.9)
    assert df.attrs["hdi_prob"] == 0.9
    for contrast, true in zip(CONTRASTS, TRUE_ATE, strict=True):
        row = df.loc[("ate", contrast)]
        assert row["mean"] == pytest.approx(true, abs=0.02)
        assert row["sd"] == pytest.approx(ATE_SD, rel=0.1)
        assert row["hdi_low"] == pytest.approx(true - 1.645 * ATE_SD, abs=0.03)
        assert row["hdi_high"] == pytest.approx(true + 1.645 * ATE_SD, abs=0.03)
        assert row["p_positive"] == 1.0
        assert df.loc[("relative", contrast), "mean"] == pytest.approx(true / 10.0, abs=0.005)
        for group, shift in zip(GROUPS, GROUP_SHIFT, strict=True):
            group_row = df.loc[("ate_by_group", f"{contrast} | {group}")]
            assert group_row["mean"] == pytest.approx(true + shift, abs=0.02)
    assert df.loc[("mean", "control"), "mean"] == pytest.approx(10.0, abs=0.01)


def test_summary_pools_chains_exactly(result: EffectResult) -> None:
    ate = result.tree["draws"]["ate"].sel(contrast="double - control")
    pooled = ate.transpose("chain", "draw").values.ravel()
    expected = summarize_draws(pooled, prob=0.8)
    row = result.summary(prob=0.8).loc[("ate", "double - control")]
    for key, value in expected.items():
        assert row[key] == pytest.approx(value, rel=1e-12)


def test_summary_without_groups_and_prob_attr() -> None:
    result = EffectResult(make_tree(by_group=False, rows=False, hdi_prob=0.5))
    assert result.groups is None
    df = result.summary()
    assert df.attrs["hdi_prob"] == 0.5
    assert set(df.index.get_level_values("kind")) == {"mean", "ate", "relative"}
    narrow = df.loc[("ate", CONTRASTS[0])]
    wide = result.summary(prob=0.99).loc[("ate", CONTRASTS[0])]
    assert wide["hdi_high"] - wide["hdi_low"] > narrow["hdi_high"] - narrow["hdi_low"]


@pytest.mark.parametrize("prob", [0.0, 1.0, 1.5, -0.1])
def test_invalid_prob(result: EffectResult, prob: float) -> None:
    with pytest.raises(ValueError, match="prob"):
        result.summary(prob=prob)
    with pytest.raises(ValueError, match="prob"):
        result.plot(prob=prob)


def test_invalid_trees() -> None:
    with pytest.raises(TypeError, match="DataTree"):
        EffectResult(xr.Dataset())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'draws'"):
        EffectResult(xr.DataTree(xr.Dataset(attrs={"baseline": "control"})))
    tree = make_tree()
    del tree.attrs["baseline"]
    with pytest.raises(ValueError, match="baseline"):
        EffectResult(tree)
    with pytest.raises(ValueError, match="not one of the scenarios"):
        EffectResult(make_tree(baseline="nope"))
    with pytest.raises(ValueError, match="prob"):
        EffectResult(make_tree(hdi_prob=2.0))
    tree = make_tree()
    tree["draws"] = tree["draws"].to_dataset().drop_vars("ate")
    with pytest.raises(ValueError, match="'ate'"):
        EffectResult(tree)
    tree = make_tree()
    tree["draws"] = tree["draws"].to_dataset().rename_dims(contrast="effect")
    with pytest.raises(ValueError, match="must have dims"):
        EffectResult(tree)


def test_plot_with_groups(result: EffectResult, tmp_path: Path) -> None:
    fig = result.plot(prob=0.9)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2
    labels = [t.get_text() for t in fig.axes[1].get_yticklabels()]
    assert labels == GROUPS
    path = tmp_path / "effects.png"
    fig.savefig(path)
    assert path.stat().st_size > 0


def test_plot_without_groups(tmp_path: Path) -> None:
    fig = EffectResult(make_tree(by_group=False)).plot()
    assert len(fig.axes) == 1
    fig.savefig(tmp_path / "ate.png")


def test_plot_on_given_axes(result: EffectResult) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    assert result.plot(ax=ax) is fig
    assert len(fig.axes) == 1
    fig2, axes = plt.subplots(1, 2)
    assert result.plot(ax=axes) is fig2
    assert axes[1].get_title().startswith("ATE by group")
    fig3, axes3 = plt.subplots(1, 2)
    assert result.plot(ax=list(axes3)) is fig3
    with pytest.raises(ValueError, match="one or two"):
        result.plot(ax=[ax, ax, ax])


def test_summary_is_dataframe(result: EffectResult) -> None:
    assert isinstance(result.summary(), pd.DataFrame)


def test_by_group_contrasts_matched_by_name() -> None:
    tree = make_tree(rows=False)
    by_group = tree["by_group"].to_dataset()
    tree["by_group"] = by_group.isel(contrast=[1, 0])
    df = EffectResult(tree).summary()
    for contrast, true in zip(CONTRASTS, TRUE_ATE, strict=True):
        assert df.loc[("ate_by_group", f"{contrast} | b"), "mean"] == pytest.approx(true, abs=0.02)


def test_by_group_contrast_count_must_match() -> None:
    tree = make_tree(rows=False)
    tree["by_group"] = tree["by_group"].to_dataset().isel(contrast=[0])
    with pytest.raises(ValueError, match="contrasts"):
        EffectResult(tree)
