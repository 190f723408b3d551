"""A loaded SVI model leaves its optimizer state in the folder until a fit resumes.

The state of an optimizer such as Adam is several arrays the size of the
guide's parameters; with a parameter per row (``AutoNormal`` over a row
latent) it is most of what a loaded model would hold. It is read and checked
at load, then read again, and compared with the digest taken then, when a
fit resumes or the model is saved.
"""

from __future__ import annotations

import json
import shutil
import tracemalloc

import jax
import numpy as np
import pytest
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.optim import Adam

import dopax
from dopax.exceptions import SavedModelError
from saved_kernels import row_effects

ROWS = 300_000  # 1.2 MB per per-row array: above the size that stays in the folder


def _model() -> dopax.ImpactModel:
    svi = SVI(row_effects, AutoNormal(row_effects), Adam(0.05), Trace_ELBO())
    return dopax.ImpactModel(row_effects, jax.random.key(0), svi)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(ROWS, 2)).astype(np.float32) * 0.5
    y = rng.poisson(np.exp(0.3 + X @ np.asarray([0.5, -0.5], np.float32))).astype(np.int32)
    return X, y


@pytest.fixture(scope="module")
def saved(data, tmp_path_factory):
    X, y = data
    model = _model().fit_on_batch(X, y, num_steps=5, num_samples=4, progress=False)
    path = tmp_path_factory.mktemp("deferred") / "model"
    dopax.save_model(model, path)
    return model, path


def _resume(model: dopax.ImpactModel, data) -> np.ndarray:
    X, y = data
    key = jax.random.key(9)
    model.fit_on_batch(X, y, num_steps=3, num_samples=4, rng_key=key, progress=False)
    return np.asarray(model.vi_result.losses)


def _state_bytes(path) -> int:
    manifest = json.loads((path / "dopax_model.json").read_text())
    return sum(
        int(np.prod(rec["shape"])) * np.dtype(rec["dtype"]).itemsize
        for name, rec in manifest["arrays"].items()
        if name.startswith("fit/state/")
    )


def test_loading_holds_the_parameters_but_not_the_optimizer_state(saved, tmp_path):
    _, path = saved
    state_bytes = _state_bytes(path)
    params_bytes = 2 * ROWS * 4  # z_auto_loc and z_auto_scale
    assert state_bytes >= 3 * params_bytes  # Adam: the parameters and two moments
    tracemalloc.start()
    try:
        loaded = dopax.load_model(path, row_effects)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < params_bytes + state_bytes / 3, (held, params_bytes, state_bytes)
    assert loaded.vi_result.params["z_auto_loc"].shape == (ROWS,)


def test_a_loaded_model_resumes_exactly_as_the_one_it_was_saved_from(saved, data):
    model, path = saved
    loaded = dopax.load_model(path, row_effects)
    np.testing.assert_array_equal(_resume(loaded, data), _resume(model, data))
    np.testing.assert_array_equal(
        loaded.vi_result.params["z_auto_loc"], model.vi_result.params["z_auto_loc"]
    )


def test_a_folder_changed_after_loading_refuses_the_resume(saved, data, tmp_path):
    _, path = saved
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    loaded = dopax.load_model(copy, row_effects)
    # the folder now holds another fit of the same shapes
    other = _model().fit_on_batch(*data, num_steps=2, num_samples=4, progress=False)
    dopax.save_model(other, copy, overwrite=True)
    with pytest.raises(
        SavedModelError,
        match=r"fit/state/\d+ has changed since the model was loaded.*Load the model",
    ):
        _resume(loaded, data)

    gone = tmp_path / "gone"
    shutil.copytree(path, gone)
    loaded = dopax.load_model(gone, row_effects)
    shutil.rmtree(gone)
    with pytest.raises(SavedModelError, match=r"fit/state/\d+ is gone since the model was loaded"):
        _resume(loaded, data)


def test_a_loaded_model_saves_over_its_own_folder(saved, data, tmp_path):
    _, path = saved
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    expected = _resume(dopax.load_model(path, row_effects), data)
    loaded = dopax.load_model(copy, row_effects)
    dopax.save_model(loaded, copy, overwrite=True)  # reads its state before replacing it
    np.testing.assert_array_equal(_resume(dopax.load_model(copy, row_effects), data), expected)
