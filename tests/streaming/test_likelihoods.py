"""Every likelihood family streams in row blocks, with the same draws however a call is cut.

One kernel holds a site of each family dopax draws from row-keyed streams.
Its draws must not depend on ``batch_size``, ``store``, ``shard_axis``, the
device count or the ``*_on_batch`` twin, and no call may warn (pytest turns
warnings into errors). Random bits are identical by construction; values may
differ only by the rounding of the kernel's own arithmetic at different batch
shapes, which can move a discrete draw across a boundary (or flip a rejection
step) in a tiny fraction of cells: at most ``MAX_MISMATCH`` is allowed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from streaming.test_engine import REPO, make_model, make_posterior, make_x, values

KEY = 11
N_ROWS = 40
MAX_MISMATCH = 2e-3
SITES = [
    "y",
    "negbin2",
    "zip",
    "student_t",
    "beta_y",
    "gamma",
    "beta_binomial",
    "categorical",
]


def likelihoods_kernel(X: Any, y: Any = None) -> None:
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]))
    with numpyro.plate("obs", X.shape[0]):
        eta = X @ beta
        numpyro.sample("y", dist.Poisson(jnp.exp(0.5 * eta + 2.0)), obs=y)
        numpyro.sample("negbin2", dist.NegativeBinomial2(jnp.exp(0.3 * eta + 1.0), 3.0))
        numpyro.sample("zip", dist.ZeroInflatedPoisson(0.3, jnp.exp(0.3 * eta)))
        numpyro.sample("student_t", dist.StudentT(4.0, eta, 1.0))
        numpyro.sample("beta_y", dist.Beta(jnp.exp(0.5 * eta), 2.0))
        numpyro.sample("gamma", dist.Gamma(2.0, 2.0 / jnp.exp(0.2 * eta)))
        numpyro.sample("beta_binomial", dist.BetaBinomial(jnp.exp(0.5 * eta), 2.0, 20))
        logits = jnp.stack([eta, -eta, 0.0 * eta], -1)
        numpyro.sample("categorical", dist.Categorical(logits=logits))


def mismatch(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of cells where two draws of a site differ beyond rounding."""
    assert a.shape == b.shape and a.dtype == b.dtype
    if a.dtype.kind == "f":
        return float(np.mean(~np.isclose(a, b, rtol=1e-5, atol=1e-6)))
    return float(np.mean(a != b))


def assert_same_draws(got: dict[str, np.ndarray], ref: dict[str, np.ndarray], label: str) -> None:
    assert set(got) == set(ref) == set(SITES), label
    for name in SITES:
        frac = mismatch(got[name], ref[name])
        assert frac <= MAX_MISMATCH, f"{label}: {name} differs in {frac:.2%} of cells"


_SUBPROCESS = """
import sys
import jax, numpy as np
sys.path.insert(0, {tests!r})
from streaming.test_likelihoods import KEY, N_ROWS, SITES, likelihoods_kernel
from streaming.test_engine import make_model, make_posterior, make_x, values
assert jax.device_count() == 4, jax.devices()
model = make_model(likelihoods_kernel).set_posterior_sample(make_posterior(sigma=False))
X = make_x(n_rows=N_ROWS)
out = {{}}
for axis, store in (("obs", "persistent"), ("draw", "memory")):
    tree = model.predict(X, rng_key=jax.random.key(KEY), batch_size=8, shard_axis=axis,
                         store=store, return_sites=SITES, output_dir={out_dir!r}, progress=False)
    for k, v in values(tree).items():
        out[axis + "__" + k] = v
np.savez({npz!r}, **out)
"""


def test_every_family_streams_with_the_same_draws(tmp_path: Path) -> None:
    """4 devices, 8-row blocks, either shard axis or store: the draws of one block on 1 device.

    (Compiling this kernel dominates the cost, so the streamed calls, which
    cover batch size, shard axis, store and device count at once, run in the
    4-device process, and the reference is ``predict_on_batch`` here.)
    """
    npz = tmp_path / "four.npz"
    code = _SUBPROCESS.format(
        tests=str(REPO / "tests"), out_dir=str(tmp_path / "out4"), npz=str(npz)
    )
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "4", "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    # the reference, computed while the subprocess runs
    model = make_model(likelihoods_kernel).set_posterior_sample(make_posterior(sigma=False))
    X = make_x(n_rows=N_ROWS)
    tree = model.predict_on_batch(X, rng_key=jax.random.key(KEY), return_sites=SITES)
    ref = values(tree)  # type: ignore[arg-type]
    for name in SITES:  # fresh numbers in every draw and row
        assert np.unique(ref[name]).size >= (100 if ref[name].dtype.kind == "f" else 3), name
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr.decode()[-4000:]
    four = np.load(npz)
    for axis in ("obs", "draw"):
        got = {k.split("__", 1)[1]: four[k] for k in four.files if k.startswith(axis + "__")}
        assert_same_draws(got, ref, f"4 devices, shard_axis={axis}")
