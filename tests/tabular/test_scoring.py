"""Per-row summaries in row blocks: the same draws as one call over all rows."""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd
import pytest

from dopax.tables.predictor import TablePredictor
from dopax.tables.scoring import summarize_rows


def test_summaries_do_not_depend_on_the_block_size(svi_model, xy):
    X, t, _ = xy
    key = jax.random.key(4)
    whole = summarize_rows(svi_model, X, {"t": t}, rng_key=key)
    blocks = summarize_rows(svi_model, X, {"t": t}, rng_key=key, block_rows=7)
    # same random numbers; only the kernel's float rounding at other shapes differs
    np.testing.assert_allclose(blocks.to_numpy(), whole.to_numpy(), rtol=1e-5, atol=1e-6)
    draws = svi_model.predict_on_batch(X, t=t, rng_key=key, in_sample=False, return_datatree=False)
    np.testing.assert_allclose(whole["y_mean"], draws["y"].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(whole["y_sd"], draws["y"].std(0, ddof=1), rtol=1e-4, atol=1e-6)
    lower, upper = np.quantile(draws["y"].astype(np.float64), [0.03, 0.97], axis=0)
    np.testing.assert_allclose(whole["y_lower"], lower, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(whole["y_upper"], upper, rtol=1e-5, atol=1e-6)


def test_table_predictor_binds_columns_and_checks_params(svi_model, xy):
    X, t, _ = xy
    frame = pd.DataFrame(X[:4], columns=["X_0", "X_1", "X_2"]).assign(t=t[:4], extra="x")
    out = TablePredictor(svi_model).predict(frame, {"return_sites": "tau", "seed": 1})
    assert list(out.columns) == ["tau_mean", "tau_sd", "tau_lower", "tau_upper"]
    assert out["tau_mean"].nunique() == 1  # a global site, repeated on every row
    with pytest.raises(ValueError, match="Unknown parameter"):
        TablePredictor(svi_model).predict(frame, {"draws": 3})
    with pytest.raises(ValueError, match=r"'X'.*X_0 \.\. X_2"):
        TablePredictor(svi_model).predict(frame.drop(columns=["X_0", "X_1", "X_2"]))
