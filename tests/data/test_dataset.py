from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dopax.data import ArrayDataset


def make() -> ArrayDataset:
    return ArrayDataset(x=np.arange(12.0).reshape(6, 2), y=np.arange(6), w=None)


def test_len_names_and_none_dropped() -> None:
    ds = make()
    assert len(ds) == 6
    assert ds.names == ("x", "y")
    assert set(ds.arrays) == {"x", "y"}


def test_arrays_are_numpy_by_default_and_lists_accepted() -> None:
    ds = ArrayDataset(a=[1, 2, 3], b=(4.0, 5.0, 6.0))
    assert all(isinstance(arr, np.ndarray) for arr in ds.arrays.values())
    np.testing.assert_array_equal(ds.arrays["a"], [1, 2, 3])


def test_to_jax_stores_jax_arrays() -> None:
    ds = ArrayDataset(to_jax=True, a=np.arange(4), b=[[1.0], [2.0], [3.0], [4.0]])
    assert all(isinstance(arr, jax.Array) for arr in ds.arrays.values())
    row = ds[np.array([3, 0])]
    assert isinstance(row["a"], jax.Array)
    np.testing.assert_array_equal(row["a"], [3, 0])
    np.testing.assert_array_equal(ds[[1, 2]]["b"], [[2.0], [3.0]])


def test_arrays_mapping_is_read_only() -> None:
    ds = make()
    with pytest.raises(TypeError):
        ds.arrays["z"] = np.zeros(6)  # type: ignore[index]
    assert ds.names == ("x", "y")


def test_getitem_integer_gives_rows() -> None:
    ds = make()
    row = ds[2]
    assert set(row) == {"x", "y"}
    np.testing.assert_array_equal(row["x"], [4.0, 5.0])
    assert row["y"] == 2
    np.testing.assert_array_equal(ds[-1]["y"], 5)


def test_getitem_slice_and_index_array() -> None:
    ds = make()
    block = ds[1:4]
    assert block["x"].shape == (3, 2)
    np.testing.assert_array_equal(block["y"], [1, 2, 3])
    picked = ds[np.array([5, 0, 5])]
    np.testing.assert_array_equal(picked["y"], [5, 0, 5])
    np.testing.assert_array_equal(picked["x"], [[10.0, 11.0], [0.0, 1.0], [10.0, 11.0]])
    np.testing.assert_array_equal(ds[[0, 2]]["y"], [0, 2])


def test_getitem_out_of_range() -> None:
    with pytest.raises(IndexError):
        make()[6]


def test_jnp_input_kept_as_numpy_by_default() -> None:
    ds = ArrayDataset(a=jnp.arange(3))
    assert isinstance(ds.arrays["a"], np.ndarray)


def test_no_arrays_errors() -> None:
    with pytest.raises(ValueError, match="at least one array"):
        ArrayDataset()
    with pytest.raises(ValueError, match="at least one array"):
        ArrayDataset(a=None, to_jax=True)


def test_unequal_leading_sizes_error_lists_each() -> None:
    with pytest.raises(ValueError, match="leading size") as info:
        ArrayDataset(x=np.zeros((3, 2)), y=np.zeros(4), z=np.zeros(3))
    message = str(info.value)
    assert "'x': 3" in message
    assert "'y': 4" in message
    assert "'z': 3" in message


def test_zero_d_array_error_names_it() -> None:
    with pytest.raises(ValueError, match=r"'s'.*0-d.*leading"):
        ArrayDataset(x=np.zeros(3), s=np.float64(1.0))
    with pytest.raises(ValueError, match="'t'"):
        ArrayDataset(t=5)


def test_empty_leading_axis_allowed() -> None:
    ds = ArrayDataset(x=np.zeros((0, 3)))
    assert len(ds) == 0
