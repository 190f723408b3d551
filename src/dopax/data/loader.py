"""Mini-batch iteration over an :class:`~dopax.data.ArrayDataset`."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from dopax.data.dataset import Array, ArrayDataset

__all__ = ["ArrayLoader"]


def _is_prng_key(rng_key: Any) -> bool:
    """Return whether ``rng_key`` is one typed PRNG key or one legacy ``uint32[2]`` key."""
    if not isinstance(rng_key, jax.Array | np.ndarray):
        return False
    if jax.dtypes.issubdtype(rng_key.dtype, jax.dtypes.prng_key):
        return rng_key.shape == ()
    return rng_key.dtype == np.uint32 and rng_key.shape == (2,)


class ArrayLoader:
    """Iterate over an :class:`~dopax.data.ArrayDataset` in mini-batches.

    Each ``iter(loader)`` call starts one epoch and yields ``(batch, n_pad)`` pairs:
    ``batch`` maps each array name to a block of at most ``batch_size`` rows, and
    ``n_pad`` is the number of padding rows appended to it (always 0 without a
    ``device``). The last batch of an epoch may be shorter than ``batch_size``.

    With ``shuffle=True``, epoch ``e`` visits the rows in the order
    ``jax.random.permutation(jax.random.fold_in(rng_key, e), len(dataset))``, so the
    order is fixed by ``rng_key`` and changes from one epoch to the next. Without
    shuffling, the rows are visited in order and unpadded batches are slices of the
    dataset's arrays.

    With a ``device``, each batch is padded (by repeating its last row) to a multiple
    of the number of devices (1 for a single ``jax.Device``, ``len(device_set)`` for a
    ``jax.sharding.Sharding``) and placed with ``jax.device_put(batch, device)``. The
    padding rows are the last ``n_pad`` rows of the batch; drop them from the results,
    e.g. ``out[: out.shape[0] - n_pad]``.
    """

    def __init__(
        self,
        dataset: ArrayDataset,
        rng_key: jax.Array,
        *,
        batch_size: int = 32,
        shuffle: bool = False,
        device: jax.Device | jax.sharding.Sharding | None = None,
    ) -> None:
        """Set up the loader; no data is read until iteration.

        Args:
            dataset: The dataset to iterate over.
            rng_key: A JAX PRNG key (typed, from ``jax.random.key``, or legacy
                ``uint32[2]``, from ``jax.random.PRNGKey``). Used only for shuffling.
            batch_size: The number of dataset rows per batch, a positive integer.
            shuffle: Visit the rows in a new random order each epoch.
            device: Where to place each batch: a ``jax.Device`` or a
                ``jax.sharding.Sharding``. ``None`` leaves batches as the dataset's
                arrays (numpy or JAX) and never pads.

        Raises:
            TypeError: If ``dataset`` is not an ``ArrayDataset``, ``rng_key`` is not a
                single JAX PRNG key, or ``device`` is neither a ``jax.Device``, a
                ``jax.sharding.Sharding`` nor ``None``.
            ValueError: If ``batch_size`` is not a positive integer.
        """
        if not isinstance(dataset, ArrayDataset):
            raise TypeError(
                f"dataset must be an ArrayDataset, got {type(dataset).__name__}; "
                "wrap your arrays as ArrayDataset(name=array, ...)."
            )
        if not _is_prng_key(rng_key):
            desc = (
                f"an array of dtype {rng_key.dtype} and shape {tuple(rng_key.shape)}"
                if isinstance(rng_key, jax.Array | np.ndarray)
                else type(rng_key).__name__
            )
            raise TypeError(
                f"rng_key must be a single JAX PRNG key, got {desc}; "
                "pass jax.random.key(seed) (or a legacy jax.random.PRNGKey(seed))."
            )
        if (
            isinstance(batch_size, bool | np.bool_)
            or not isinstance(batch_size, int | np.integer)
            or batch_size < 1
        ):
            raise ValueError(
                f"batch_size must be a positive int, got {batch_size!r}; pass e.g. batch_size=32."
            )
        if device is not None and not isinstance(device, jax.Device | jax.sharding.Sharding):
            raise TypeError(
                "device must be a jax.Device, a jax.sharding.Sharding or None, "
                f"got {type(device).__name__}."
            )
        self._dataset = dataset
        self._rng_key = rng_key
        self._batch_size = int(batch_size)
        self._shuffle = bool(shuffle)
        self._device = device
        # Batches are padded to a multiple of the number of devices they are placed on.
        self._multiple = len(device.device_set) if isinstance(device, jax.sharding.Sharding) else 1
        self._epoch = 0

    @property
    def dataset(self) -> ArrayDataset:
        """The dataset iterated over."""
        return self._dataset

    @property
    def batch_size(self) -> int:
        """The number of dataset rows per batch (the last batch may hold fewer)."""
        return self._batch_size

    @property
    def shuffle(self) -> bool:
        """Whether the rows are visited in a new random order each epoch."""
        return self._shuffle

    @property
    def device(self) -> jax.Device | jax.sharding.Sharding | None:
        """Where each batch is placed, or ``None`` to leave batches where the data is."""
        return self._device

    @property
    def epoch(self) -> int:
        """The number of epochs started so far (``iter`` calls on this loader)."""
        return self._epoch

    def __len__(self) -> int:
        """Return the number of batches per epoch, ``ceil(len(dataset) / batch_size)``."""
        return math.ceil(len(self._dataset) / self._batch_size)

    def __iter__(self) -> Iterator[tuple[dict[str, Array], int]]:
        """Start the next epoch.

        Returns:
            An iterator of ``(batch, n_pad)`` pairs covering every row of the dataset
            exactly once (plus ``n_pad`` padding rows at the end of each batch).
        """
        epoch = self._epoch
        self._epoch += 1
        return self._iterate(epoch)

    def _iterate(self, epoch: int) -> Iterator[tuple[dict[str, Array], int]]:
        """Yield the batches of epoch ``epoch``."""
        n = len(self._dataset)
        order: np.ndarray | None = None
        if self._shuffle:
            key = jax.random.fold_in(self._rng_key, epoch)
            order = np.asarray(jax.random.permutation(key, n))
        for start in range(0, n, self._batch_size):
            stop = min(start + self._batch_size, n)
            n_pad = -(stop - start) % self._multiple
            rows: np.ndarray | None = None
            if order is not None:
                rows = order[start:stop]
            elif n_pad:
                rows = np.arange(start, stop)
            if rows is not None and n_pad:
                rows = np.concatenate([rows, np.repeat(rows[-1:], n_pad)])
            batch = self._dataset[slice(start, stop) if rows is None else rows]
            if self._device is not None:
                batch = jax.device_put(batch, self._device)
            yield batch, n_pad

    def __repr__(self) -> str:
        return (
            f"ArrayLoader(len(dataset)={len(self._dataset)}, batch_size={self._batch_size}, "
            f"shuffle={self._shuffle}, device={self._device!r}, epoch={self._epoch})"
        )
