"""Tutorial: a Bayesian neural network for a binary outcome, end to end.

1. Simulate a binary outcome whose log-odds are linear in 100 features.
2. Define a flax ``nnx`` network (100 -> 32 -> 32 -> 1, sigmoid output) and
   make every weight a latent site with ``random_nnx_module``; the kernel
   observes the labels in a subsampled plate and records the probabilities
   as the deterministic site ``p``.
3. Fit it with mini-batch SVI, plot the loss, stream posterior-predictive
   draws for every row into a Zarr store, and clean up.

The network's ``__call__`` ends in ``.squeeze()``, as such networks often
do: on one row that drops the row axis too, which dopax handles.

Run it with ``python examples/tutorial_bnn.py`` (20,000 rows, in seconds) or
``--n 1000000`` for the tutorial's full size. The loss plot goes to
``examples/output/tutorial_loss.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
import numpyro.distributions as dist
from flax import nnx
from jax import Array, default_backend, random
from jax.typing import ArrayLike
from numpyro import deterministic, plate, sample
from numpyro.contrib.module import random_nnx_module
from numpyro.infer import SVI, Trace_ELBO, init_to_uniform
from numpyro.infer.autoguide import AutoNormal
from optax import adam

from dopax import ImpactModel

matplotlib.use("Agg")

OUT = Path(__file__).resolve().parent / "output"


class MLP(nnx.Module):
    """Three dense layers with ReLU activations and a sigmoid output."""

    dtype: jnp.dtype = jnp.bfloat16 if default_backend() == "gpu" else jnp.float32

    def __init__(self, din: int, dmid: int, dout: int, *, rngs: nnx.Rngs) -> None:
        self.linear1 = nnx.Linear(din, dmid, dtype=self.dtype, rngs=rngs)
        self.linear2 = nnx.Linear(dmid, dmid, dtype=self.dtype, rngs=rngs)
        self.linear3 = nnx.Linear(dmid, dout, dtype=self.dtype, rngs=rngs)

    def __call__(self, x: ArrayLike) -> Array:
        x = self.linear1(x)
        x = nnx.relu(x)
        x = self.linear2(x)
        x = nnx.relu(x)
        x = self.linear3(x)
        return nnx.sigmoid(x).squeeze()


def simulate(n: int, d: int, rng_key: Array) -> tuple[Array, Array, Array]:
    """Return ``(X, y, rng_key)``: features, Bernoulli labels and the remaining key."""
    rng_key, key_x, key_beta, key_y = random.split(rng_key, 4)
    X = random.normal(key_x, (n, d))
    beta = random.normal(key_beta, (d,))
    p_true = nnx.sigmoid(X @ beta)
    y = random.bernoulli(key_y, p_true).astype(jnp.int32)
    return X, y, rng_key


def build(n: int, d: int, rng_key: Array) -> tuple[ImpactModel, Array]:
    """Return the model (kernel, guide, optimiser) and the remaining key."""
    rng_key, key_nn = random.split(rng_key)
    p_nn_module = MLP(din=d, dmid=32, dout=1, rngs=nnx.Rngs(params=key_nn))

    def model(X: ArrayLike, *, y: ArrayLike | None = None) -> None:
        nn_p = random_nnx_module(
            "nn_p", nn_module=p_nn_module, scope_divider="_", prior=dist.Normal()
        )
        with plate("data", size=n, subsample_size=len(X)):
            p = nn_p(X)
            deterministic("p", p)
            sample("y", dist.Bernoulli(p), obs=y)

    rng_key, key_model = random.split(rng_key)
    im = ImpactModel(
        model,
        rng_key=key_model,
        inference=SVI(
            model,
            guide=AutoNormal(model=model, init_loc_fn=init_to_uniform(radius=0.1)),
            optim=adam(learning_rate=1e-3),
            loss=Trace_ELBO(),
        ),
    )
    return im, rng_key


def run(
    n: int = 20_000,
    *,
    d: int = 100,
    num_samples: int = 500,
    out: Path | None = OUT,
) -> dict:
    """Simulate, fit, predict and clean up; return a few facts about the run.

    Args:
        n: Rows of simulated data (the tutorial has 1,000,000).
        d: Features.
        num_samples: Posterior draws.
        out: Folder for the loss plot, or ``None`` for no plot.
    """
    X, y, rng_key = simulate(n, d, random.key(0))
    im, rng_key = build(n, d, rng_key)
    im.fit(X, y, num_samples=num_samples, batch_size=min(2000, n), epochs=10, progress=False)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(7.5, 6))
        ax.plot(im.vi_result.losses)
        ax.set(yscale="log")
        ax.set_xlabel("Iteration", fontsize=14)
        ax.set_ylabel("Loss (log scale)", fontsize=14)
        ax.set_title("ELBO Loss", fontsize=18)
        fig.savefig(out / "tutorial_loss.png")
        plt.close(fig)
    dt = im.predict(X, batch_size=100_000)
    facts = {
        "losses": len(im.vi_result.losses),
        "sites": sorted(dt["posterior_predictive"].data_vars),
        "shape": dict(dt["posterior_predictive"]["p"].sizes),
        "mean_p": float(dt["posterior_predictive"]["p"].mean()),
        "mean_y": float(jnp.mean(y)),
        "temp_dir": im.temp_dir,
    }
    print(dt)
    im.cleanup()
    return facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="rows of simulated data")
    parser.add_argument("--num-samples", type=int, default=500, help="posterior draws")
    args = parser.parse_args()
    facts = run(args.n, num_samples=args.num_samples)
    print(f"mean predicted p {facts['mean_p']:.3f}, observed rate {facts['mean_y']:.3f}")


if __name__ == "__main__":
    main()
