"""The `dopax` command line as a user runs it, and its checks of bad arguments."""

from __future__ import annotations

import subprocess
import sys

import jax
import numpy as np
import pandas as pd
import pytest
import zarr

import dopax
from dopax.cli.main import main
from dopax.effects import EffectResult
from helpers import ROOT, subprocess_env


@pytest.fixture(scope="module")
def saved(svi_model, tmp_path_factory):
    return dopax.save_model(svi_model, tmp_path_factory.mktemp("cli") / "model")


@pytest.fixture(scope="module")
def table(xy):
    X, t, _ = xy
    frame = pd.DataFrame(X, columns=[f"X_{j}" for j in range(X.shape[1])])
    frame["t"] = t
    frame["degree"] = np.where(np.arange(len(t)) % 3 == 0, "yes", "no")
    return frame


def _dopax(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "dopax.cli.main", *map(str, args), "--trust-code"],
        capture_output=True, text=True, cwd=cwd or ROOT, env=subprocess_env(), timeout=300,
    )  # fmt: skip


def _main(argv):
    """``main`` as a user who trusts the test's own model runs it."""
    return main([str(a) for a in argv] + ["--trust-code"])


def _result_path(stdout):
    return stdout.strip().splitlines()[-1]


def test_predict_on_csv_and_parquet_equals_predict(saved, table, xy, tmp_path, capsys):
    X, t, _ = xy
    table.to_csv(tmp_path / "rows.csv", index=False)
    table.to_parquet(tmp_path / "rows.parquet")
    expected = dopax.load_model(saved, trust_code=True).predict(
        X, t=t, rng_key=jax.random.key(7), in_sample=False, output_dir=tmp_path / "ref",
        progress=False,
    )["predictions"]  # fmt: skip
    run = _dopax("predict", saved, tmp_path / "rows.csv", "-o", tmp_path / "out", "--seed", 7)
    assert run.returncode == 0, run.stderr
    assert "predict" in run.stderr and "100%" in run.stderr  # the progress bar
    paths = [_result_path(run.stdout)]
    argv = ["predict", saved, tmp_path / "rows.parquet", "-o", tmp_path / "out", "--seed", "7"]
    assert _main([*argv, "-q"]) == 0
    paths.append(_result_path(capsys.readouterr().out))
    for path in paths:
        got = dopax.open_result(path)["predictions"]
        for site in ("y", "mu"):
            np.testing.assert_array_equal(got[site].values, expected[site].values)


def test_effect_matches_compare_scenarios_and_show_describes_it(saved, table, xy, tmp_path, capsys):
    X, t, _ = xy
    table.to_parquet(tmp_path / "rows.parquet")
    run = _dopax(
        "effect", saved, tmp_path / "rows.parquet", "--scenario", "treated:t=1",
        "--scenario", "control:t=0", "--baseline", "control", "--by", "degree",
        "-o", tmp_path / "out", "--seed", 3, "-q",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    path = _result_path(run.stdout)
    got = EffectResult(dopax.open_result(path)).summary()
    model = dopax.load_model(saved, trust_code=True)
    expected = model.compare_scenarios(
        X,
        {"treated": {"t": np.ones_like(t)}, "control": {"t": np.zeros_like(t)}},
        baseline="control", by=table["degree"].to_numpy(), rng_key=jax.random.key(3),
        progress=False, t=t,
    ).summary()  # fmt: skip
    pd.testing.assert_frame_equal(got, expected)
    assert "treated - control" in run.stdout  # the summary is printed too
    arrays = [a for _, a in zarr.open_group(path, mode="r").members(max_depth=None)]
    arrays = [a for a in arrays if isinstance(a, zarr.Array)]
    assert arrays and all(
        type(a.metadata.codecs[-1]).__name__ == "Crc32cCodec" for a in arrays
    )  # every chunk written carries a checksum

    assert main(["show", path]) == 0
    shown = capsys.readouterr().out
    assert "complete: yes" in shown
    assert "group /draws" in shown and "group /by_group" in shown
    assert "(chain, draw, contrast)" in shown and "@baseline: control" in shown
    # an unfinished result says so and exits with status 1
    zarr.open_group(path, mode="r+", use_consolidated=True).attrs["dopax_complete"] = False
    assert main(["show", path]) == 1
    assert "complete: NO" in capsys.readouterr().out


def _fails(argv, capsys, *needles):
    with pytest.raises(SystemExit) as exit_info:
        _main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err


def test_bad_arguments_name_the_argument_and_leave_nothing(saved, table, tmp_path, capsys):
    out = tmp_path / "never"
    table.drop(columns=["t"]).to_csv(tmp_path / "no_t.csv", index=False)
    table.to_csv(tmp_path / "rows.csv", index=False)
    np.save(tmp_path / "x.npy", table[["X_0", "X_1", "X_2"]].to_numpy(np.float32))
    rows = tmp_path / "rows.csv"
    _fails(["predict", saved, tmp_path / "no_t.csv", "-o", out], capsys, "'t'", "no_t.csv")
    _fails(["predict", saved, tmp_path / "x.npy", "-o", out], capsys, "'t'", "x.npy")
    _fails(["predict", saved, tmp_path / "rows.txt", "-o", out], capsys, "INPUT", "rows.txt")
    _fails(["predict", tmp_path / "nope", rows, "-o", out], capsys, "MODEL", "No saved dopax model")
    _fails(
        ["predict", saved, rows, "-o", out, "--intervention", "gamma=1"], capsys,
        "--intervention", "gamma",
    )  # fmt: skip
    _fails(
        ["effect", saved, rows, "--scenario", "a:dose=1", "--baseline", "a", "-o", out], capsys,
        "--scenario", "'dose'",
    )  # fmt: skip
    _fails(
        ["effect", saved, rows, "--scenario", "a:t=1", "--baseline", "b", "-o", out], capsys,
        "--baseline",
    )  # fmt: skip
    _fails(
        ["effect", saved, rows, "--scenario", "a:t=one", "--baseline", "a", "-o", out], capsys,
        "--scenario", "'one' is not a number",
    )  # fmt: skip
    assert not out.exists()
    # the same as a user sees it, from a child process
    run = _dopax("predict", saved, tmp_path / "no_t.csv", "-o", out)
    assert run.returncode == 2 and "Kernel argument 't' is missing" in run.stderr
    assert not out.exists()


def test_effect_to_a_url(saved, table, tmp_path, capsys):
    table.to_csv(tmp_path / "rows.csv", index=False)
    argv = ["effect", saved, tmp_path / "rows.csv", "--scenario", "on:t=1", "--scenario", "off"]
    argv += ["--baseline", "off", "-o", "memory://dopax-cli/results", "-q"]
    assert _main(argv) == 0
    url = _result_path(capsys.readouterr().out)
    assert url.startswith("memory://dopax-cli/results/effect-")
    assert EffectResult(dopax.open_result(url)).contrasts == ("on - off",)
    _fails(["predict", saved, tmp_path / "rows.csv", "-o", "nope://x"], capsys, "-o", "nope")


def test_array_inputs_npz_and_zarr(saved, xy, tmp_path, capsys):
    X, t, _ = xy
    np.savez(tmp_path / "rows.npz", X=X, t=t)
    group = zarr.open_group(tmp_path / "rows.zarr", mode="w")
    group.create_array("X", data=X, chunks=(16, 3))
    group.create_array("t", data=t, chunks=(16,))
    paths = []
    for source in ("rows.npz", "rows.zarr"):
        code = _main(["predict", saved, tmp_path / source, "-o", tmp_path / "out", "-q"])
        assert code == 0
        paths.append(capsys.readouterr().out.strip().splitlines()[-1])
    a, b = (dopax.open_result(p)["predictions"]["y"].values for p in paths)
    np.testing.assert_array_equal(a, b)  # same default key, same rows, same draws
    assert main(["show", saved]) == 0
    shown = capsys.readouterr().out
    assert "saved_kernels:linear" in shown and "columns X_0 .. X_2" in shown


def test_summarize_and_loo_commands_equal_the_methods(saved, table, xy, tmp_path, capsys):
    X, t, y = xy
    table.assign(y=y).to_csv(tmp_path / "rows.csv", index=False)
    out = tmp_path / "out"
    argv = ["summarize", saved, tmp_path / "rows.csv", "-o", out, "--seed", 5, "--trust-code"]
    assert main([str(a) for a in [*argv, "--quantiles", "0.5", "--prob", "0.9", "-q"]]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    got = dopax.open_result(printed[-1])
    model = dopax.load_model(saved, trust_code=True)
    want = model.summarize(
        X, y, t=t, prob=0.9, quantiles=(0.5,), in_sample=False, rng_key=jax.random.key(5),
        store="memory", progress=False,
    )  # fmt: skip
    for name, value in want["summary"].data_vars.items():
        np.testing.assert_allclose(got["summary"][name].values, value.values, rtol=1e-6)
    assert printed[0] == f"coverage of the 90% intervals: {want.attrs['coverage']:.4f}"

    # (a model fitted in 300 steps on 64 rows: some rows have Pareto k above good_k)
    with pytest.warns(UserWarning, match="Pareto k above"):
        argv = ["loo", saved, tmp_path / "rows.csv", "-o", out, "-q", "--trust-code"]
        assert main([str(a) for a in argv]) == 0
    printed = capsys.readouterr().out
    with pytest.warns(UserWarning, match="Pareto k above"):
        elpd = model.loo(X, y, t=t, store="memory", progress=False)
    assert f"{elpd.elpd_loo:.2f}" in printed and "Pareto k diagnostic values" in printed
    stored = dopax.open_result(_result_path(printed))["loo"]
    np.testing.assert_allclose(stored["loo_i"].values, elpd.loo_i.values, rtol=1e-6)

    never = tmp_path / "never"
    rows = tmp_path / "rows.csv"
    trust = "--trust-code"
    _fails(["summarize", saved, rows, "-o", never, "--prob", "1.5", trust], capsys, "--prob 1.5")
    bad_quantiles = ["summarize", saved, rows, "-o", never, "--quantiles", "a", trust]
    _fails(bad_quantiles, capsys, "--quantiles")
    table.to_csv(tmp_path / "no_y.csv", index=False)
    no_y = ["loo", saved, tmp_path / "no_y.csv", "-o", never, trust]
    _fails(no_y, capsys, "needs the observed", "'y'")
    assert not never.exists()
