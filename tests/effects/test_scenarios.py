from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import xarray as xr
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.optim import Adam

from dopax import ImpactModel, open_result
from dopax.effects import EffectResult
from dopax.exceptions import ScenarioError

N, D = 60, 40


def kernel(X: Any, t: Any, y: Any = None) -> None:
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 5.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]))
    tau = numpyro.sample("tau", dist.Normal(0.0, 1.0))
    gamma = numpyro.sample("gamma", dist.Normal(0.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("rows", X.shape[0]):
        mu = numpyro.deterministic("mu", alpha + X @ beta + tau * t + gamma * t * X[:, 0])
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


@pytest.fixture
def setup() -> tuple[ImpactModel, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, 3)).astype(np.float32)
    t = (rng.random(N) < 0.5).astype(np.float32)
    post = {
        "alpha": rng.normal(size=D).astype(np.float32),
        "beta": rng.normal(size=(D, 3)).astype(np.float32),
        "tau": (2.0 + 0.1 * rng.normal(size=D)).astype(np.float32),
        "gamma": (0.5 + 0.1 * rng.normal(size=D)).astype(np.float32),
        "sigma": (0.5 + rng.random(D)).astype(np.float32),
    }
    model = ImpactModel(
        kernel, jax.random.key(0), SVI(kernel, AutoNormal(kernel), Adam(0.01), Trace_ELBO())
    )
    model.set_posterior_sample(post)
    return model, X, t, post


def scenarios() -> dict[str, dict[str, np.ndarray]]:
    return {"treated": {"t": np.ones(N, np.float32)}, "control": {"t": np.zeros(N, np.float32)}}


def test_shared_random_numbers_cancel_the_noise(setup: Any) -> None:
    model, X, t, post = setup
    res = model.compare_scenarios(
        X, scenarios(), baseline="control", t=t, progress=False, batch_size=7
    )
    assert isinstance(res, EffectResult)
    ate = res.tree["draws"]["ate"].values.reshape(-1)
    expected = (post["tau"][:, None] + post["gamma"][:, None] * X[:, 0][None]).mean(axis=1)
    # per-draw ATE equals the mean of mu1 - mu0 to float32 rounding
    np.testing.assert_allclose(ate, expected, rtol=1e-5, atol=1e-5)
    rows = res.tree["rows"]
    per_row = post["tau"][:, None] + post["gamma"][:, None] * X[:, 0][None]
    np.testing.assert_allclose(rows["effect_mean"].values[0], per_row.mean(0), rtol=1e-5, atol=1e-5)
    assert (rows["effect_lower"].values <= rows["effect_upper"].values).all()


def test_single_pass_matches_two_call_route(setup: Any) -> None:
    model, X, t, _ = setup
    key = jax.random.key(5)
    res = model.compare_scenarios(
        X, scenarios(), baseline="control", t=t, rng_key=key, progress=False
    )
    base = model.predict(X, t=np.zeros(N, np.float32), rng_key=key, progress=False)
    treat = model.predict(X, t=np.ones(N, np.float32), rng_key=key, progress=False)
    contrast = model.estimate_effect(output_baseline=base, output_intervention=treat)
    two_call = contrast["posterior_predictive"]["y"].mean("y_dim_0").values.reshape(-1)
    np.testing.assert_allclose(
        res.tree["draws"]["ate"].values.reshape(-1), two_call, rtol=1e-4, atol=1e-4
    )
    # estimate_effect computing both sides itself shares the key too
    own = model.estimate_effect(
        args_baseline={"X": X, "t": np.zeros(N, np.float32), "rng_key": key},
        args_intervention={"X": X, "t": np.ones(N, np.float32)},
        on_batch=True,
    )
    np.testing.assert_allclose(
        own["posterior_predictive"]["y"].mean("y_dim_0").values.reshape(-1),
        two_call,
        rtol=1e-4,
        atol=1e-4,
    )


def test_groups_recover_known_group_effects(setup: Any) -> None:
    model, X, t, post = setup
    groups = np.where(X[:, 0] > 0, "high", "low")
    res = model.compare_scenarios(
        X, scenarios(), baseline="control", by=groups, t=t, progress=False
    )
    by = res.tree["by_group"]["ate"]
    for g in ("high", "low"):
        x0 = X[groups == g, 0]
        expected = (post["tau"][:, None] + post["gamma"][:, None] * x0[None]).mean(1)
        got = by.sel(group=g, contrast="treated - control").values.reshape(-1)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    table = res.summary()
    assert ("ate_by_group", "treated - control | high") in table.index


def test_intervention_scenarios_and_relative_effect(setup: Any) -> None:
    model, X, t, post = setup
    res = model.compare_scenarios(
        X,
        {"base": {}, "tau3": {"intervention": {"tau": 3.0}}},
        baseline="base",
        t=t,
        progress=False,
    )
    ate = res.tree["draws"]["ate"].values.reshape(-1)
    expected = ((3.0 - post["tau"])[:, None] * t[None]).mean(1)
    np.testing.assert_allclose(ate, expected, rtol=1e-5, atol=1e-5)
    rel = res.tree["draws"]["relative"].values.reshape(-1)
    base_mean = res.tree["draws"]["mean"].sel(scenario="base").values.reshape(-1)
    np.testing.assert_allclose(rel, ate / base_mean, rtol=1e-5)


def _kept_draws(setup: Any, tmp_path: Any, **kwargs: Any) -> EffectResult:
    """``compare_scenarios`` keeping draws; asserts the treated draws are ``predict``'s."""
    model, X, t, _ = setup
    key = jax.random.key(9)
    if kwargs.get("store") != "memory":
        kwargs["output_dir"] = tmp_path
    res = model.compare_scenarios(
        X,
        scenarios(),
        baseline="control",
        t=t,
        keep_draws=True,
        rng_key=key,
        progress=False,
        **kwargs,
    )
    ref = model.predict_on_batch(X, t=np.ones(N, np.float32), rng_key=key)
    np.testing.assert_allclose(
        res.tree["scenario_draws"]["y"].sel(scenario="treated").values,
        ref["posterior_predictive"]["y"].values,
        rtol=1e-5,
        atol=1e-5,
    )
    return res


@pytest.mark.parametrize("store", ["persistent", "memory"])
def test_keep_draws_writes_every_scenario(setup: Any, store: str, tmp_path: Any) -> None:
    res = _kept_draws(setup, tmp_path, store=store, batch_size=16)
    kept = res.tree["scenario_draws"]["y"]
    assert list(kept["scenario"].values) == ["treated", "control"]
    assert kept.shape == (1, D, 2, N)
    if store == "persistent":
        path = res.tree["scenario_draws"].attrs["artifact_path"]
        reopened = open_result(path)
        assert reopened["predictions"]["y"].shape == (1, D, 2, N)


def test_validation_errors(setup: Any) -> None:
    model, X, t, _ = setup
    with pytest.raises(ScenarioError, match="baseline"):
        model.compare_scenarios(X, scenarios(), baseline="nobody", t=t, progress=False)
    with pytest.raises(ScenarioError, match=r"Unknown intervention site\(s\) \['nope'\]"):
        model.compare_scenarios(
            X, {"a": {}, "b": {"intervention": {"nope": 1.0}}}, baseline="a", t=t, progress=False
        )
    with pytest.raises(ScenarioError, match="one value per row"):
        model.compare_scenarios(
            X, {"a": {}, "b": {"t": np.ones(N - 1, np.float32)}}, baseline="a", t=t, progress=False
        )
    with pytest.raises(ScenarioError, match="entries along its first axis"):
        model.compare_scenarios(
            X,
            {"a": {}, "b": {"intervention": {"y": np.ones(N + 3, np.float32)}}},
            baseline="a",
            t=t,
            progress=False,
        )
    with pytest.raises(ScenarioError, match=r"unknown input\(s\) \['dose'\]"):
        model.compare_scenarios(X, {"a": {}, "b": {"dose": 1.0}}, baseline="a", t=t, progress=False)
    with pytest.raises(ScenarioError, match="at least two"):
        model.compare_scenarios(X, {"a": {}}, baseline="a", t=t, progress=False)
    with pytest.raises(ValueError, match="one group label per row"):
        model.compare_scenarios(X, scenarios(), baseline="control", by=[1, 2], t=t, progress=False)


def test_estimate_effect_rejects_mismatched_results(setup: Any) -> None:
    model, X, t, _ = setup
    a = model.predict_on_batch(X, t=t)
    b = model.predict_on_batch(X[:10], t=t[:10])
    with pytest.warns(UserWarning, match="differ in size") as record:
        overlap = model.estimate_effect(output_baseline=a, output_intervention=b)
    assert len(record) == 1
    assert overlap["posterior_predictive"]["y"].shape == (1, D, 10)
    c = model.predict_on_batch(X, t=t, in_sample=False)
    with pytest.raises(ValueError, match="same kind"):
        model.estimate_effect(output_baseline=a, output_intervention=c)
    with pytest.raises(ValueError, match="exactly one"):
        model.estimate_effect(output_baseline=a, args_baseline={"X": X}, output_intervention=a)
    assert isinstance(model.estimate_effect(output_baseline=a, output_intervention=a), xr.DataTree)


@pytest.mark.parametrize("shape", [(1000, 1, 500), (37, 2, 11), (1, 1, 5), (2, 3, 4)])
@pytest.mark.parametrize("probs", [(0.025, 0.975), (0.05, 0.95), (0.0, 1.0), (0.5, 0.5)])
def test_row_quantiles_equal_numpy_quantile(
    shape: tuple[int, ...], probs: tuple[float, ...]
) -> None:
    # the per-row reduction of the scenario (and summary) block programs
    import jax

    from dopax.reductions.draws import quantile_name, summarize_draws

    d = np.random.default_rng(len(shape)).normal(size=shape).astype(np.float32)
    ref = np.quantile(d, probs, axis=0)
    got = jax.jit(summarize_draws, static_argnums=(1, 2, 3))(d, 0.5, "eti", tuple(probs))
    for i, p in enumerate(probs):
        # numpy interpolates in a different order: equal to one float32 rounding
        np.testing.assert_allclose(got[quantile_name(p)], ref[i], rtol=0, atol=4e-7)


def test_automatic_blocks_hold_a_multiple_of_eight_rows(setup: Any, tmp_path: Any) -> None:
    # 40 draws x 4 bytes x (2 x 2 scenarios + 1) = 800 bytes per row; a budget of
    # 3 x 13 rows gives 13 rows per block, rounded up to 16 (the last block of
    # the 60 rows is padded). The draws are those of an unpadded call.
    import zarr

    from dopax.config import config_context

    with config_context(memory_budget_bytes=3 * 13 * 800):
        res = _kept_draws(setup, tmp_path)
    path = res.tree["scenario_draws"].attrs["artifact_path"]
    chunks = zarr.open_array(path, path="predictions/y", mode="r").chunks
    assert chunks[3] == 16


def _draws_per_step(monkeypatch: Any) -> list[int]:
    """Record the draws per step of every scenario program traced from here on."""
    import dopax.effects.scenarios as program

    steps: list[int] = []
    real = program.map_draws

    def spy(one: Any, draws: Any, latent: Any, n_rows: int, cells: int) -> Any:
        steps.append(cells // n_rows)
        return real(one, draws, latent, n_rows, cells)

    monkeypatch.setattr(program, "map_draws", spy)
    return steps


def test_steps_of_many_draws_give_the_effects_of_one_draw_steps(
    setup: Any, monkeypatch: Any
) -> None:
    # a light kernel whose block compiled with wide steps fits its reserve runs
    # them; counting every kernel as dominated by matrix products forces one
    # draw per step; both give the same effects
    from dopax.config import config_context

    model, _, _, _ = setup
    # rows enough that a step of one draw is a step of one draw (``min_cells_per_step``);
    # shapes of this test only, so every program here is traced afresh
    n = 4_200
    rng = np.random.default_rng(7)
    X = rng.normal(size=(n, 3)).astype(np.float32)
    t = (rng.random(n) < 0.5).astype(np.float32)
    steps = _draws_per_step(monkeypatch)
    plan = {"treated": {"t": np.ones(n, np.float32)}, "control": {"t": np.zeros(n, np.float32)}}

    def run() -> EffectResult:
        return model.compare_scenarios(
            X, plan, baseline="control", t=t, progress=False, rng_key=jax.random.key(5)
        )

    wide = run()
    assert steps and min(steps) >= D  # every draw in one step
    steps.clear()
    with config_context(matmul_flops_per_cell=1e-9):
        narrow = run()
    assert steps and max(steps) == 1
    for group in wide.tree.children:
        for name, var in wide.tree[group].data_vars.items():
            np.testing.assert_allclose(
                var.values, narrow.tree[group][name].values, rtol=2e-6, atol=1e-6
            )


def _wide_temporaries(X: Any, t: Any, y: Any = None) -> None:
    # 256 sorted values per row and draw: a step of many draws would hold far
    # more than a scenario block reserves per draw and row
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 1.0))
    tau = numpyro.sample("tau", dist.Normal(0.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("rows", X.shape[0]):
        grid = X[:, :1] + jnp.linspace(-1.0, 1.0, 256, dtype=X.dtype)
        top = jnp.sort(jnp.sin(alpha * grid), axis=-1)[:, -1]
        mu = numpyro.deterministic("mu", top + tau * t)
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def test_a_kernel_whose_wide_steps_exceed_the_reserve_keeps_one_draw_steps(
    monkeypatch: Any,
) -> None:
    # the block compiled with wide steps holds more than its reserve, so the
    # comparison runs one draw per step, and its effects are still exact
    n = 4_200
    rng = np.random.default_rng(11)
    X = rng.normal(size=(n, 2)).astype(np.float32)
    t = (rng.random(n) < 0.5).astype(np.float32)
    post = {
        "alpha": rng.normal(size=D).astype(np.float32),
        "tau": (1.0 + 0.1 * rng.normal(size=D)).astype(np.float32),
        "sigma": (0.5 + rng.random(D)).astype(np.float32),
    }
    guide = AutoNormal(_wide_temporaries)
    model = ImpactModel(
        _wide_temporaries,
        jax.random.key(0),
        SVI(_wide_temporaries, guide, Adam(0.01), Trace_ELBO()),
    )
    model.set_posterior_sample(post)
    steps = _draws_per_step(monkeypatch)
    plan = {"treated": {"t": np.ones(n, np.float32)}, "control": {"t": np.zeros(n, np.float32)}}
    # the kernel holds no matrix product, so the memory analysis decides
    res = model.compare_scenarios(X, plan, baseline="control", t=t, progress=False)
    # the program with every draw in one step was traced (to be measured), and
    # the run's program takes one draw per step
    assert steps[0] == D and steps[-1] == 1
    # the sorted term does not depend on t, so each draw's effect is its tau
    ate = res.tree["draws"]["ate"].values.reshape(-1)
    np.testing.assert_allclose(ate, post["tau"], rtol=1e-5, atol=1e-5)
