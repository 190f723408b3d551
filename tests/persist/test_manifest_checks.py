"""Manifests are checked before anything is allocated; every load failure names the file."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import dopax
from dopax.cli.main import main
from dopax.exceptions import SavedModelError
from helpers import edit_manifest
from saved_kernels import linear


def test_an_input_shape_of_a_billion_is_refused_without_allocating(folder, xy, tmp_path, capsys):
    edit_manifest(folder, lambda m: m["inputs"]["rows"][0].update(shape=[1_000_000_000]))
    tracemalloc.start()
    try:
        with pytest.raises(SavedModelError, match=r"dopax_model.json: `inputs.rows\[0\].shape`"):
            dopax.load_model(folder, linear)
        assert main(["show", str(folder)]) == 2
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, peak  # Python allocations while refusing it
    assert "inputs.rows[0].shape" in capsys.readouterr().err
    X, t, _ = xy
    np.savez(tmp_path / "rows.npz", X=X, t=t)
    argv = ["predict", str(folder), str(tmp_path / "rows.npz"), "-o", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--trust-code"])
    assert info.value.code == 2 and "dopax_model.json" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda m: m["inputs"]["rows"][1].update(shape=[-3]), "inputs.rows[1].shape"),
        (lambda m: m["inputs"]["rows"][0].update(dtype="object"), "inputs.rows[0].dtype"),
        (lambda m: m["posterior"]["sites"]["beta"].update(shape=[10**9]), "arrays.posterior/0001"),
        (lambda m: m["posterior"].update(num_chains=0), "`posterior`"),
        (lambda m: m["arrays"]["posterior/0001"].update(shape=[10**9, 3]), "arrays.posterior"),
        (lambda m: m.update(kernel="saved_kernels:linear"), "`kernel`"),
        (lambda m: m["rng"].update(impl="evil"), "rng.impl"),
        (lambda m: m["rng"].update(key_data=[-1, 2]), "rng.key_data"),
        (lambda m: m.update(param_input="X; import os"), "param_input"),
        (lambda m: m.update(format_version=99), "Upgrade dopax"),
        (lambda m: m["arrays"].update({"../../etc": {}}), "'../../etc'"),
    ],
)
def test_malformed_entries_are_refused_naming_them(folder, change, needle):
    edit_manifest(folder, change)
    with pytest.raises(SavedModelError) as info:
        dopax.load_model(folder, linear)
    assert needle in str(info.value) and "dopax_model.json" in str(info.value), info.value


def test_broken_json_names_the_file(folder):
    path = folder / "dopax_model.json"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(SavedModelError, match=r"dopax_model.json is not valid JSON"):
        dopax.load_model(folder, linear)
    path.write_bytes(b"\xff\xfe not text")
    with pytest.raises(SavedModelError, match=r"dopax_model.json is not valid JSON"):
        dopax.load_model(folder, linear)


def test_a_missing_state_folder_or_group_document_names_it(folder):
    (folder / "state.zarr" / "zarr.json").unlink()
    with pytest.raises(SavedModelError, match=r"state.zarr/zarr.json is missing"):
        dopax.load_model(folder, linear)
    import shutil

    shutil.rmtree(folder / "state.zarr")
    with pytest.raises(SavedModelError, match=r"state.zarr is missing"):
        dopax.load_model(folder, linear)
