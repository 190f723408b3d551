"""Strict reading of persisted results: completion marker, missing chunks, keepalive."""

from __future__ import annotations

import gc
import json
import re
import shutil
import weakref
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

from dopax.config import ExecutionConfig
from dopax.exceptions import IncompleteResultError
from dopax.output.schema import POSITION_ATTRS, SiteLayout
from dopax.output.store import COMPLETE_ATTR, StrictStore, is_complete, open_result
from dopax.streaming.sinks import ZarrSink

Y = SiteLayout("posterior_predictive", "y", 2, 4, (3,), "float32", (1, 2, 3))
Z = SiteLayout("posterior_predictive", "z", 2, 4, (), "int64", (1, 4))
Y_VALUES = np.arange(2 * 4 * 3, dtype="float32").reshape(8, 3)
Z_VALUES = np.zeros(8, dtype="int64")  # equals the fill value: chunks must still be written


def _write(sink: ZarrSink, *, close: bool = True) -> None:
    sink.open([Y, Z], attrs={"model": "toy"})
    sink.write(Y.group, Y.name, (slice(0, 4),), Y_VALUES[:4])
    sink.write(Z.group, Z.name, (slice(0, 8),), Z_VALUES)
    sink.write(Y.group, Y.name, (slice(4, 8),), Y_VALUES[4:])
    if close:
        sink.close()


@pytest.fixture
def result(tmp_path: Path) -> Path:
    path = tmp_path / "result"
    _write(ZarrSink(path))
    return path


def test_open_result_reads_lazily(result: Path) -> None:
    tree = open_result(result)
    assert COMPLETE_ATTR not in tree.attrs
    assert tree.attrs["artifact_path"] == str(result.resolve())
    y = tree["posterior_predictive"]["y"]
    assert y.chunks is not None
    np.testing.assert_array_equal(y.values, Y_VALUES.reshape(2, 4, 3), strict=True)
    np.testing.assert_array_equal(tree["posterior_predictive/z"].values, np.zeros((2, 4), "int64"))
    assert is_complete(result)


def test_store_layout_on_disk(result: Path) -> None:
    root = json.loads((result / "zarr.json").read_text())
    assert root["attributes"][COMPLETE_ATTR] is True
    assert "posterior_predictive/y" in root["consolidated_metadata"]["metadata"]
    # every chunk is present, including those equal to the fill value
    for name, count in (("z", 2), ("y", 4)):
        chunk_dir = result / "posterior_predictive" / name / "c"
        assert sum(p.is_file() for p in chunk_dir.rglob("*")) == count


def test_open_writes_metadata_only(tmp_path: Path) -> None:
    path = tmp_path / "result"
    sink = ZarrSink(path)
    sink.open([Y, Z])
    assert not (path / "posterior_predictive" / "y" / "c").exists()
    assert (path / "posterior_predictive" / "y" / "zarr.json").exists()
    sink.abort()


def test_missing_chunk_raises(result: Path) -> None:
    (result / "posterior_predictive" / "y" / "c" / "1" / "0" / "0").unlink()
    tree = open_result(result)
    np.testing.assert_array_equal(tree["posterior_predictive/z"].values, Z_VALUES.reshape(2, 4))
    np.testing.assert_array_equal(
        tree["posterior_predictive/y"].isel(chain=0).values, Y_VALUES[:4].reshape(4, 3)
    )
    with pytest.raises(IncompleteResultError, match="missing"):
        tree["posterior_predictive/y"].values  # noqa: B018


def _flip(path: Path, at: int = 0, count: int = 4) -> None:
    data = bytearray(path.read_bytes())
    for i in range(at, at + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("variable", "chunk"), [("y", ("1", "0", "0")), ("z", ("0", "0"))])
def test_a_damaged_chunk_raises_naming_it(result: Path, variable: str, chunk: tuple) -> None:
    # raw floats and compressed integers: every chunk carries a checksum
    _flip(result / "posterior_predictive" / variable / "c" / Path(*chunk))
    key = "/".join(("posterior_predictive", variable, "c", *chunk))
    tree = open_result(result)
    with pytest.raises(IncompleteResultError, match=f"{re.escape(key)}.*checksum.*again"):
        tree["posterior_predictive"].to_dataset()[variable].values  # noqa: B018


def test_a_damaged_checksum_raises_too(result: Path) -> None:
    path = result / "posterior_predictive" / "y" / "c" / "0" / "0" / "0"
    _flip(path, at=path.stat().st_size - 4, count=1)
    with pytest.raises(IncompleteResultError, match=str(result.resolve())):
        open_result(result)["posterior_predictive/y"].values  # noqa: B018


def test_deleted_folder_raises(result: Path) -> None:
    tree = open_result(result)
    shutil.rmtree(result)
    with pytest.raises(IncompleteResultError, match=re.escape(str(result.resolve()))):
        tree["posterior_predictive/y"].values  # noqa: B018
    with pytest.raises(IncompleteResultError, match="does not exist"):
        open_result(result)


def test_unfinished_result_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "result"
    sink = ZarrSink(path)
    _write(sink, close=False)
    assert not is_complete(path)
    with pytest.raises(IncompleteResultError, match="did not complete"):
        open_result(path)
    sink.close()
    assert is_complete(path)


def test_aborted_local_result(tmp_path: Path) -> None:
    path = tmp_path / "result"
    sink = ZarrSink(path)
    _write(sink, close=False)
    sink.abort()
    assert not path.exists()
    assert not is_complete(path)
    with pytest.raises(IncompleteResultError):
        open_result(path)


def test_aborted_memory_store() -> None:
    store = zarr.storage.MemoryStore()
    sink = ZarrSink(store=store)
    _write(sink, close=False)
    with pytest.raises(IncompleteResultError, match="did not complete"):
        open_result(store)
    sink.abort()
    assert not is_complete(store)
    with pytest.raises(IncompleteResultError):
        open_result(store)


def test_memory_store_round_trip() -> None:
    store = zarr.storage.MemoryStore()
    _write(ZarrSink(store=store))
    tree = open_result(store)
    np.testing.assert_array_equal(tree["posterior_predictive/y"].values, Y_VALUES.reshape(2, 4, 3))
    assert "artifact_path" not in tree.attrs


def test_keepalive_lives_as_long_as_tree(result: Path) -> None:
    class Owner:
        pass

    owner = Owner()
    ref = weakref.ref(owner)
    tree = open_result(result, keepalive=owner)
    del owner
    gc.collect()
    assert ref() is not None
    y = tree["posterior_predictive"]["y"]
    del tree
    gc.collect()
    assert ref() is not None
    np.testing.assert_array_equal(y.values, Y_VALUES.reshape(2, 4, 3))
    del y
    gc.collect()
    assert ref() is None


def test_strict_store_keeps_keepalive_on_copies(result: Path) -> None:
    marker = object()
    strict = StrictStore(zarr.storage.LocalStore(result), label="x", keepalive=marker)
    copy = strict.with_read_only(True)
    assert isinstance(copy, StrictStore)
    assert copy.keepalive is marker
    assert copy.label == "x"


def test_open_result_rejects_other_types() -> None:
    with pytest.raises(TypeError):
        open_result(42)  # type: ignore[arg-type]


def test_position_coordinates_take_no_memory_and_select(result: Path) -> None:
    tree = open_result(result)
    node = tree["posterior_predictive"]
    for dim, size in (("chain", 2), ("draw", 4), ("y_dim_0", 3)):
        index = node.indexes[dim]
        assert isinstance(index, pd.RangeIndex) and len(index) == size
        assert node.coords[dim].dtype == np.dtype("int64")
        assert node.coords[dim].attrs == dict(POSITION_ATTRS)
    picked = node["y"].sel(chain=1, draw=2, y_dim_0=[0, 2]).values
    np.testing.assert_array_equal(picked, Y_VALUES[6, [0, 2]])
    # plain xarray reads the same coordinates from the store
    with xr.open_datatree(result, engine="zarr") as plain:
        np.testing.assert_array_equal(plain["posterior_predictive"]["y_dim_0"].values, [0, 1, 2])


def test_coordinates_are_written_in_chunks(tmp_path: Path) -> None:
    rows = SiteLayout("posterior_predictive", "y", 1, 3, (5,), "float32", (1, 3, 5))
    sink = ZarrSink(tmp_path / "out", config=ExecutionConfig(coord_chunk=2))
    sink.open([rows])
    sink.write(rows.group, rows.name, (slice(0, 3),), np.ones((3, 5), "float32"))
    sink.close()
    stored = zarr.open_array(tmp_path / "out", path="posterior_predictive/y_dim_0")
    assert stored.chunks == (2,)
    assert len(list((tmp_path / "out/posterior_predictive/y_dim_0/c").iterdir())) == 3
    np.testing.assert_array_equal(stored[:], np.arange(5))
    # chain (one value, 0, equal to the fill value) is stored too
    assert (tmp_path / "out/posterior_predictive/chain/c/0").exists()


@pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part")
def test_labelled_coordinates_keep_their_values(tmp_path: Path) -> None:
    """A dimension coordinate without the position marker is read, not replaced."""
    path = tmp_path / "labelled"
    ds = xr.Dataset({"v": (("g",), np.ones(3))}, coords={"g": [10, 20, 40]})
    xr.DataTree.from_dict({"/": xr.Dataset(), "/posterior": ds}).to_zarr(path, zarr_format=3)
    zarr.open_group(path, mode="r+").attrs[COMPLETE_ATTR] = True
    zarr.consolidate_metadata(path, zarr_format=3)
    tree = open_result(path)
    np.testing.assert_array_equal(tree["posterior"].indexes["g"], [10, 20, 40])
    assert float(tree["posterior"]["v"].sel(g=40)) == 1.0
