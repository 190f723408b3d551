"""SVI fitting loops with their progress bars (thin wrappers around the pure steps)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from dopax.data import ArrayDataset, ArrayLoader
from dopax.inference.svi import SVIDriver
from dopax.sampling.prepare import BoundArgs

__all__ = ["fit_epochs", "fit_steps"]


def fit_steps(
    driver: SVIDriver,
    state: Any,
    bound: BoundArgs,
    args: Mapping[str, Any],
    num_steps: int | None,
    min_steps: int,
    progress: bool,
) -> tuple[Any, np.ndarray]:
    """Run full-batch steps: exactly ``num_steps``, or until the loss settles when ``None``.

    Args:
        driver: The SVI driver.
        state: The SVI state to start from.
        bound: The bound inputs (for the static arguments).
        args: The array arguments, on the device.
        num_steps: Steps, or ``None`` for the automatic mode.
        min_steps: Least steps of the automatic mode.
        progress: Whether to show a progress bar with the loss.
    """
    label = "fit" if num_steps is None else "fit_on_batch"
    with tqdm(total=num_steps, disable=not progress, desc=label, leave=False) as bar:

        def show(step: int, loss: float) -> None:
            bar.n = step
            bar.set_postfix(loss=f"{loss:.4g}", refresh=True)

        return driver.run_full_batch(
            state, bound.static, args, num_steps=num_steps, min_steps=min_steps, progress=show
        )


def fit_epochs(
    driver: SVIDriver,
    state: Any,
    bound: BoundArgs,
    key: jax.Array,
    batch_size: int | None,
    epochs: int,
    shuffle: bool,
    loader: ArrayLoader | None,
    progress: bool,
) -> tuple[Any, np.ndarray]:
    """Run ``epochs`` passes of mini-batch steps.

    Args:
        driver: The SVI driver.
        state: The SVI state to start from.
        bound: The bound inputs.
        key: Key of the shuffling (when the loader is made here).
        batch_size: Rows per mini-batch (when the loader is made here).
        epochs: Passes over the data.
        shuffle: Whether to shuffle rows every epoch.
        loader: The user's loader (its padded rows are dropped), or ``None``.
        progress: Whether to show a progress bar with the loss.
    """
    if loader is None:
        loader = ArrayLoader(
            ArrayDataset(**dict(bound.rows)), key, batch_size=batch_size or 1, shuffle=shuffle
        )
    shared = {k: jnp.asarray(v) for k, v in bound.shared.items()}

    def batches(epoch: int) -> Iterator[dict[str, Any]]:
        for batch, n_pad in loader:
            keep = {k: v for k, v in batch.items() if k in bound.rows}
            if n_pad:
                keep = {k: v[: v.shape[0] - n_pad] for k, v in keep.items()}
            yield {**shared, **{k: jnp.asarray(v) for k, v in keep.items()}}

    with tqdm(total=epochs, disable=not progress, desc="fit", leave=False) as bar:

        def show(epoch: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}", refresh=True)

        return driver.run_epochs(state, bound.static, batches, epochs=epochs, progress=show)
