"""Named arrays that share one leading (row) axis."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ArrayDataset"]

#: An array held by a dataset: numpy by default, JAX when built with ``to_jax=True``.
Array: TypeAlias = np.ndarray | jax.Array


class ArrayDataset:
    """Named arrays that share one leading size, indexed row-wise.

    ``ds[i]`` returns ``{name: array[i]}`` for every stored array. ``i`` may be an
    integer (one row per array), a slice or an integer index array (a block of rows
    per array).

    Example:
        >>> ds = ArrayDataset(x=np.zeros((5, 3)), y=np.arange(5), w=None)
        >>> len(ds), ds.names
        (5, ('x', 'y'))
        >>> ds[1:3]["y"]
        array([1, 2])
    """

    def __init__(self, *, to_jax: bool = False, **arrays: Any) -> None:
        """Store the given arrays.

        Args:
            to_jax: Store the arrays as JAX arrays (``jnp.asarray``) instead of numpy
                arrays (``np.asarray``).
            **arrays: The named arrays (lists and other array-likes are accepted). Each
                needs at least one axis, and all share the size of their first axis.
                ``None`` values are dropped.

        Raises:
            ValueError: If no array is left after dropping ``None`` values, if an array
                is 0-d, or if the arrays' leading sizes differ.
        """
        convert = jnp.asarray if to_jax else np.asarray
        stored: dict[str, Array] = {
            name: convert(value) for name, value in arrays.items() if value is not None
        }
        if not stored:
            raise ValueError(
                "ArrayDataset needs at least one array: pass arrays as keyword arguments, "
                "e.g. ArrayDataset(x=x, y=y) (None values are dropped)."
            )
        scalars = [name for name, arr in stored.items() if arr.ndim == 0]
        if scalars:
            listed = ", ".join(repr(name) for name in scalars)
            raise ValueError(
                f"ArrayDataset arrays {listed} are 0-d, but every array needs a leading "
                "(row) axis: give them shape (n, ...) or pass a scalar as a one-row array, "
                "e.g. np.asarray([value])."
            )
        sizes = {name: int(arr.shape[0]) for name, arr in stored.items()}
        if len(set(sizes.values())) > 1:
            listed = ", ".join(f"{name!r}: {size}" for name, size in sizes.items())
            raise ValueError(
                f"ArrayDataset arrays must share one leading size, got {listed}; "
                "pass arrays with the same number of rows."
            )
        self._arrays = stored
        self._len = next(iter(sizes.values()))

    @property
    def arrays(self) -> Mapping[str, Array]:
        """The stored arrays by name (a read-only mapping)."""
        return MappingProxyType(self._arrays)

    @property
    def names(self) -> tuple[str, ...]:
        """The names of the stored arrays, in the order they were given."""
        return tuple(self._arrays)

    def __len__(self) -> int:
        """Return the leading size shared by the arrays (the number of rows)."""
        return self._len

    def __getitem__(self, index: Any) -> dict[str, Array]:
        """Return ``{name: array[index]}`` for every stored array.

        Args:
            index: An integer (one row), a slice or an integer index array (a block of
                rows); a list or tuple is read as an index array.

        Returns:
            A new dict mapping each name to the selected row(s) of its array.
        """
        if isinstance(index, list | tuple):
            index = np.asarray(index)
        return {name: arr[index] for name, arr in self._arrays.items()}

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={tuple(arr.shape)}:{arr.dtype}" for name, arr in self._arrays.items()
        )
        return f"ArrayDataset(len={self._len}, {fields})"
