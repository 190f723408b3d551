"""Loading reads data only: no code named by the folder runs unless the caller trusts it."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.optim import Adam

import dopax
from dopax.cli.main import main
from dopax.exceptions import SavedModelError
from dopax.persist.allowed import is_allowed
from helpers import edit_manifest
from saved_kernels import linear


def _svi():
    return SVI(linear, AutoNormal(linear), Adam(0.02), Trace_ELBO())


def test_a_line_added_to_kernel_py_never_runs_without_trust_code(folder, xy, tmp_path, capsys):
    marker = tmp_path / "ran"
    code = folder / "kernel.py"
    code.write_text(code.read_text() + f"\nopen({str(marker)!r}, 'w').close()\n")

    with pytest.raises(SavedModelError, match=r"saved_kernels:linear.*kernel=.*trust_code=True"):
        dopax.load_model(folder)
    model = dopax.load_model(folder, kernel=linear)
    X, t, _ = xy
    assert model.predict_on_batch(X, t=t, return_datatree=False)["y"].shape[1] == len(X)
    dopax.load_model(folder, kernel=linear, inference=_svi())
    # the command line refuses too, with status 2 and the flag that allows it
    rows = tmp_path / "rows.npz"
    np.savez(rows, X=X, t=t)
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(folder), str(rows), "-o", str(tmp_path / "out"), "-q"])
    assert exit_info.value.code == 2 and "--trust-code" in capsys.readouterr().err
    assert not marker.exists()

    # the same file runs once the caller trusts the folder and needs it (the
    # module named by the reference is gone, so the saved source stands in)
    edit_manifest(folder, lambda m: m["kernel"].update(ref="saved_kernels_gone:linear"))
    with pytest.raises(SavedModelError, match=r"saved_kernels_gone:linear.*trust_code=True"):
        dopax.load_model(folder)
    assert not marker.exists()
    with pytest.warns(UserWarning, match="source saved with the model"):
        dopax.load_model(folder, trust_code=True)
    assert marker.exists()


def test_a_callable_named_by_the_manifest_is_not_called(folder, tmp_path):
    marker = tmp_path / "ran"
    call = {"call": "subprocess:run", "kwargs": {"args": ["touch", str(marker)]}}
    edit_manifest(folder, lambda m: m["inference"]["optim"]["kwargs"].update(step_size=call))
    with pytest.raises(SavedModelError) as info:
        dopax.load_model(folder, linear)
    message = str(info.value)
    assert "dopax_model.json" in message and "inference.optim.kwargs.step_size" in message
    assert "'subprocess:run'" in message and "inference=" in message and "trust_code" in message
    assert not marker.exists()
    # the object itself stands in for the record, which is then not read
    assert dopax.load_model(folder, linear, inference=_svi()).is_fitted()
    assert not marker.exists()


def test_an_optimizer_class_outside_the_allow_list_is_not_called(folder, tmp_path):
    marker = tmp_path / "ran"
    system = {"class": "os:system", "kwargs": {"command": f"touch {marker}"}}
    edit_manifest(folder, lambda m: m["inference"].update(optim=system))
    with pytest.raises(SavedModelError, match=r"inference\.optim\.class.*'os:system'"):
        dopax.load_model(folder, linear)
    assert not marker.exists()


def test_a_function_of_the_code_file_in_the_record_needs_trust(folder, tmp_path):
    # a record naming a definition of kernel.py (as a custom guide function is saved)
    edit_manifest(folder, lambda m: m["inference"].update(guide={"function": {"code": "linear"}}))
    with pytest.raises(SavedModelError, match=r"inference\.guide\.function.*code file"):
        dopax.load_model(folder, linear)
    assert dopax.load_model(folder, linear, trust_code=True).inference.guide is not None


def test_static_values_that_name_functions_are_left_out(folder):
    edit_manifest(folder, lambda m: m["inputs"]["static"].update(link={"ref": "builtins:eval"}))
    with pytest.warns(UserWarning, match="'link'.*'builtins:eval'.*pass it to each call"):
        model = dopax.load_model(folder, linear)
    assert "link" not in dict(model._state.ctx.inputs.static)


@pytest.mark.parametrize(
    "ref",
    [
        "numpyro.infer.autoguide:AutoNormal",
        "numpyro.infer.autoguide:AutoMultivariateNormal",
        "numpyro.infer.elbo:TraceMeanField_ELBO",
        "numpyro.infer.hmc:NUTS",
        "numpyro.infer.sa:SA",
        "numpyro.infer.mcmc:MCMC",
        "numpyro.optim:ClippedAdam",
        "numpyro.optim:Minimize",
        "numpyro.infer.initialization:init_to_median",
        "numpyro.infer.hmc_util:euclidean_kinetic_energy",
        "jax.example_libraries.optimizers:exponential_decay",
    ],
)
def test_the_allow_list_holds_numpyros_constructors(ref):
    assert is_allowed(ref)


@pytest.mark.parametrize(
    "ref",
    [
        "subprocess:run",
        "os:system",
        "builtins:eval",
        "saved_kernels:linear",
        "numpyro.optim:jax",  # a module the allowed module imports
        "numpyro.optim:optax_to_numpyro",
        "numpyro.optim:_NumPyroOptim",
        "numpyro.infer.autoguide:AutoGuideList",  # holds other guides
        "numpyro.infer.autoguide:AutoGuide",
        "numpyro.infer.hmc:hmc",  # a function, not a sampler class
        "numpyro.infer.hmc:NUTS.__init__",
        "jax.example_libraries.optimizers:adam",
        "jax.example_libraries.optimizers:jax",
        "numpyro.optim",
        "",
        None,
    ],
)
def test_the_allow_list_refuses_everything_else(ref):
    assert not is_allowed(ref)


def test_a_model_loaded_without_code_predicts_as_the_saved_one(svi_model, folder, xy):
    X, t, _ = xy
    key = jax.random.key(3)
    a = svi_model.predict_on_batch(X, t=t, rng_key=key, return_datatree=False)
    b = dopax.load_model(folder, linear).predict_on_batch(
        X, t=t, rng_key=key, return_datatree=False
    )
    for site in a:
        np.testing.assert_array_equal(a[site], b[site])
