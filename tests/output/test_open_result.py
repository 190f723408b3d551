"""Strict reading of persisted results: completion marker, missing chunks, keepalive."""

from __future__ import annotations

import gc
import json
import re
import shutil
import weakref
from pathlib import Path

import numpy as np
import pytest
import zarr

from dopax.exceptions import IncompleteResultError
from dopax.output.schema import SiteLayout
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
