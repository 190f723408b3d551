"""A saved model's stored bytes are verified: damage raises naming the file, before any use."""

from __future__ import annotations

import json
import re
import shutil

import jax
import numpy as np
import pytest
import zarr

import dopax
from dopax.exceptions import SavedModelError
from saved_kernels import linear


def _chunk(folder, name="posterior/0001"):
    """The first chunk file of a saved array (``beta``'s draws by default)."""
    return folder / "state.zarr" / name / "c" / "0" / "0"


def test_every_array_is_stored_with_a_checksum_and_recorded(folder):
    manifest = json.loads((folder / "dopax_model.json").read_text())
    assert manifest["format_version"] == 2
    assert manifest["arrays"]["posterior/0001"] == {
        "shape": [100, 3], "dtype": "float32", "chunks": [100, 3]
    }  # fmt: skip
    root = zarr.open_group(folder / "state.zarr", mode="r")
    for name in manifest["arrays"]:
        codecs = [type(c).__name__ for c in root[name].metadata.codecs]
        assert codecs == ["BytesCodec", "Crc32cCodec"], name


def test_flipped_bytes_raise_naming_the_file(folder):
    path = _chunk(folder)
    data = bytearray(path.read_bytes())
    data[40:56] = bytes(b ^ 0xFF for b in data[40:56])  # 16 flipped bytes
    path.write_bytes(bytes(data))
    with pytest.raises(SavedModelError, match=r"posterior/0001/c/0/0 does not match its checksum"):
        dopax.load_model(folder, linear)


def test_a_deleted_chunk_raises_naming_it(folder):
    _chunk(folder).unlink()
    with pytest.raises(SavedModelError, match=r"posterior/0001/c/0/0 is missing.*save the model"):
        dopax.load_model(folder, linear)


def test_a_truncated_chunk_raises_before_it_is_read(folder):
    path = _chunk(folder)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(SavedModelError, match=r"posterior/0001/c/0/0 holds \d+ bytes instead"):
        dopax.load_model(folder, linear)


def test_a_missing_or_changed_zarr_json_raises_naming_it(folder, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    (folder / "state.zarr" / "posterior" / "0001" / "zarr.json").unlink()
    with pytest.raises(SavedModelError, match=re.escape("posterior/0001/zarr.json is missing")):
        dopax.load_model(folder, linear)
    meta_path = other / "state.zarr" / "posterior" / "0001" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["shape"] = [1_000_000_000, 3]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(SavedModelError, match=r"0001/zarr.json does not describe the array"):
        dopax.load_model(other, linear)


def test_a_model_saved_without_checksums_loads_with_a_warning(svi_model, folder, xy):
    # the format of earlier versions: arrays compressed by Zarr's default, names only
    manifest = json.loads((folder / "dopax_model.json").read_text())
    arrays = {}
    root = zarr.open_group(folder / "state.zarr", mode="r")
    for name in manifest["arrays"]:
        arrays[name] = root[name][...]
    shutil.rmtree(folder / "state.zarr")
    old = zarr.open_group(folder / "state.zarr", mode="w", zarr_format=3)
    for name, value in arrays.items():
        group, _, leaf = name.rpartition("/")
        old.require_group(group).create_array(leaf, data=value)
    manifest["format_version"] = 1
    manifest["arrays"] = sorted(arrays)
    (folder / "dopax_model.json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="no checksums.*Save it again"):
        loaded = dopax.load_model(folder, linear)
    X, t, _ = xy
    key = jax.random.key(2)
    a = svi_model.predict_on_batch(X, t=t, rng_key=key, return_datatree=False)
    b = loaded.predict_on_batch(X, t=t, rng_key=key, return_datatree=False)
    np.testing.assert_array_equal(a["y"], b["y"])
