"""The main dopax job end to end on the LaLonde (NSW) job-training experiment.

1. Fit a Bayesian linear regression of 1978 earnings on treatment and
   covariates with SVI.
2. Stream posterior-predictive draws for every person into a Zarr store (in a
   temporary folder, removed at the end) and reopen it with no model at hand.
3. Estimate the average treatment effect of the programme in one pass over the
   data with shared random numbers (``compare_scenarios``), with conditional
   effects for people with and without a high-school degree.
4. Print the estimate beside the experimental difference in means and save a
   plot.
5. Save the fitted model, load it back, and score new rows with the ``dopax``
   command line.

Run it with ``make demo``. The plot goes to ``examples/output/``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import matplotlib
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.optim import Adam

import dopax
from data_lalonde import load_lalonde  # the script's own folder is on sys.path
from dopax import ImpactModel

matplotlib.use("Agg")

OUT = Path(__file__).resolve().parent / "output"
COVARIATES = ["age", "educ", "black", "hisp", "marr", "nodegree", "re74", "re75"]


def kernel(X, treat, nodegree, y=None):
    """Earnings ($1,000) = intercept + covariates + effect (by degree status) + noise."""
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 10.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 2.0).expand([X.shape[1]]).to_event(1))
    tau = numpyro.sample("tau", dist.Normal(0.0, 5.0))
    delta = numpyro.sample("delta", dist.Normal(0.0, 5.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(10.0))
    with numpyro.plate("person", X.shape[0]):
        effect = tau + delta * nodegree
        mu = numpyro.deterministic("mu", alpha + X @ beta + effect * treat)
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def report(table, y, treat) -> str:
    """The demo's verdict, read from the summary table as printed (rounded to 3 places)."""
    shown = table.round(3)
    ate = shown.loc[("ate", "treated - control")]
    diff = 1000 * (y[treat == 1].mean() - y[treat == 0].mean())
    return "\n".join(
        [
            "Average effect of the training programme on 1978 earnings",
            f"  dopax posterior mean ${1000 * ate['mean']:,.0f}, "
            f"95% HDI [${1000 * ate['hdi_low']:,.0f}, ${1000 * ate['hdi_high']:,.0f}], "
            f"P(effect > 0) = {ate['p_positive']:.3f}",
            f"  experimental difference in means ${diff:,.0f}",
            "",
            "Summary (earnings in $1,000):",
            shown.to_string(),
        ]
    )


def main(out: Path = OUT) -> None:
    out.mkdir(parents=True, exist_ok=True)
    df = load_lalonde()
    X_raw = df[COVARIATES].to_numpy(np.float32)
    X = (X_raw - X_raw.mean(0)) / X_raw.std(0)
    treat = df["treat"].to_numpy(np.float32)
    nodegree = df["nodegree"].to_numpy(np.float32)
    y = (df["re78"].to_numpy(np.float32)) / 1000.0
    n = len(df)
    print(f"LaLonde NSW experimental sample: {n} people, {int(treat.sum())} treated.")

    model = ImpactModel(
        kernel,
        rng_key=jax.random.key(0),
        inference=SVI(kernel, AutoNormal(kernel), Adam(0.02), Trace_ELBO()),
    )
    model.fit(X, y, treat=treat, nodegree=nodegree, num_samples=2000, progress=False)
    print(f"Fitted with SVI in {len(model.vi_result.losses)} steps.")

    # Streamed posterior-predictive draws, persisted as a self-describing Zarr store.
    with tempfile.TemporaryDirectory(prefix="dopax-lalonde-") as scratch:
        predictive = model.predict(
            X, treat=treat, nodegree=nodegree, batch_size=128, output_dir=scratch, progress=False
        )
        path = predictive.attrs["artifact_path"]
        reopened = dopax.open_result(path)
        y_rep = reopened["posterior_predictive"]["y"]
        print(f"Posterior predictive draws written to {path}: {dict(y_rep.sizes)}")
        print(
            f"  mean predicted 1978 earnings ${1000 * float(y_rep.mean()):,.0f} "
            f"(observed ${1000 * y.mean():,.0f})"
        )
        del predictive, reopened, y_rep

    # One pass over the data: everyone treated versus no one treated.
    result = model.compare_scenarios(
        X,
        {
            "treated": {"treat": np.ones(n, np.float32)},
            "control": {"treat": np.zeros(n, np.float32)},
        },
        baseline="control",
        by=np.where(nodegree > 0, "no degree", "degree"),
        treat=treat,
        nodegree=nodegree,
        progress=False,
    )
    table = result.summary(prob=0.95)
    print()
    print(report(table, y, treat))
    fig = result.plot(prob=0.95, label="Effect on 1978 earnings", units="$1,000")
    fig.savefig(out / "lalonde_effect.png", dpi=120, bbox_inches="tight")
    print(f"\nPlot saved to {os.path.relpath(out / 'lalonde_effect.png')}")
    save_and_score(model, X, treat, nodegree)


def save_and_score(model: ImpactModel, X, treat, nodegree) -> None:
    """Save the model, load it back, and score ten people with `dopax predict`."""
    folder = OUT / "lalonde-model"
    dopax.save_model(model, folder, overwrite=True)  # the kernel above goes to kernel.py
    loaded = dopax.load_model(folder, kernel=kernel)  # data only: the kernel is ours
    key = jax.random.key(1)
    args = {
        "treat": treat[:10],
        "nodegree": nodegree[:10],
        "rng_key": key,
        "return_datatree": False,
    }
    same = np.array_equal(
        model.predict_on_batch(X[:10], **args)["y"], loaded.predict_on_batch(X[:10], **args)["y"]
    )
    print(
        f"\nSaved the model to {os.path.relpath(folder)}; loaded back, it predicts the same: {same}"
    )
    rows = pd.DataFrame(X[:10], columns=[f"X_{j}" for j in range(X.shape[1])])
    rows["treat"], rows["nodegree"] = treat[:10], nodegree[:10]
    rows.to_csv(OUT / "new_people.csv", index=False)
    script = Path(sys.executable).with_name("dopax")  # the console script of this environment
    dopax_cmd = [str(script)] if script.exists() else [sys.executable, "-m", "dopax"]
    args_cli = ["predict", os.path.relpath(folder), os.path.relpath(OUT / "new_people.csv")]
    args_cli.append("--trust-code")  # the folder is our own: its kernel.py may run
    with tempfile.TemporaryDirectory(prefix="dopax-scored-") as scored:
        print("$ dopax " + " ".join([*args_cli, "-o", "<a temporary folder>", "-q"]))
        cmd = [*dopax_cmd, *args_cli, "-o", scored, "-q"]
        run = subprocess.run(cmd, capture_output=True, text=True, check=True)
        path = run.stdout.strip().splitlines()[-1]
        y_new = dopax.open_result(path)["predictions"]["y"]
        means = ", ".join(f"${1000 * v:,.0f}" for v in y_new.mean(("chain", "draw")).values[:5])
        print(f"`dopax predict` scored {y_new.sizes['y_dim_0']} people from new_people.csv")
        print(f"  predicted 1978 earnings of the first five: {means}")
        del y_new


if __name__ == "__main__":
    main()
