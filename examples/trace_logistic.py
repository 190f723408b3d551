"""MCMC streamed to a Zarr trace: a logistic regression, run, reopened, read by ArviZ.

1. Simulate a binary outcome whose log-odds are linear in five features.
2. Run NUTS (four chains, one after another) streamed to a
   :class:`dopax.ZarrTrace`: the draws and sample statistics go to the
   store segment by segment, so the run's memory does not grow with its
   draws and a stopped run resumes where it stopped.
3. Reopen the trace (as a new process would), summarise it with ArviZ,
   plot the chains, and predict from the trace block by block.

Run it with ``python examples/trace_logistic.py``; the trace plot goes to
``examples/output/trace_logistic.png``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import arviz as az
import jax
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS

import dopax

matplotlib.use("Agg")

OUT = Path(__file__).resolve().parent / "output"


def logistic(X: Any, y: Any = None) -> None:
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 1.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=alpha + X @ beta), obs=y)


def run(n: int = 2000, draws: int = 1000, out: Path | None = OUT) -> dict[str, Any]:
    """Fit, reopen, summarise and predict; return what the run showed.

    Args:
        n: Rows of simulated data.
        draws: Draws per chain (as many warm-up iterations before them).
        out: Folder for the trace plot, or ``None`` for no plot.
    """
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 5)).astype(np.float32)
    beta_true = np.linspace(-1.0, 1.0, 5)
    y = (rng.random(n) < 1 / (1 + np.exp(-(0.5 + X @ beta_true)))).astype(np.float32)
    mcmc = MCMC(
        NUTS(logistic),
        num_warmup=draws,
        num_samples=draws,
        num_chains=4,
        chain_method="sequential",
        progress_bar=False,
    )
    model = dopax.ImpactModel(logistic, jax.random.key(0), mcmc)
    with tempfile.TemporaryDirectory(prefix="dopax-trace-") as scratch:
        store = Path(scratch) / "logistic.zarr"
        model.fit_on_batch(X, y, trace=dopax.ZarrTrace(str(store)), progress=False)
        trace = dopax.ZarrTrace.open(str(store))  # as a new process would
        idata = az.from_datatree(trace.to_datatree().load())
        summary = az.summary(idata, var_names=["alpha", "beta"])
        print(f"trace {trace.status}: {trace.draws_done} draws per chain")
        print(summary)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            az.plot_trace(idata, var_names=["alpha", "beta"], compact=True)
            plt.gcf().savefig(out / "trace_logistic.png", dpi=100, bbox_inches="tight")
            plt.close("all")
        # predictions read the posterior from the trace, one block of draws at a time
        pred = model.predict_on_batch(X, return_datatree=False)
        facts = {
            "status": trace.status,
            "draws": trace.draws_done,
            "alpha": float(summary.loc["alpha", "mean"]),
            "beta": summary.loc[[f"beta[{i}]" for i in range(5)], "mean"].to_numpy(),
            "beta_true": beta_true,
            "max_rhat": float(summary["r_hat"].max()),
            "divergences": int(idata.sample_stats["diverging"].sum()),
            "predicted_rate": float(pred["y"].mean()),
            "observed_rate": float(y.mean()),
        }
    return facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="rows of simulated data")
    parser.add_argument("--draws", type=int, default=1000, help="draws per chain")
    args = parser.parse_args()
    facts = run(args.n, args.draws)
    print(
        f"alpha {facts['alpha']:.2f} (true 0.50); largest R-hat {facts['max_rhat']:.3f}; "
        f"predicted rate {facts['predicted_rate']:.3f}, observed {facts['observed_rate']:.3f}"
    )


if __name__ == "__main__":
    main()
