"""Argument checks of the public methods, each naming the argument and the fix."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from dopax.execution.request import Output
from dopax.streaming.targets import check_output

__all__ = ["optional_positive_int", "positive_int", "streamed_output"]


def positive_int(value: Any, name: str) -> int:
    """Return ``value`` as an ``int`` if it is a positive integer, else raise.

    Args:
        value: The argument.
        name: Its name.
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
    return int(value)


def optional_positive_int(value: Any, name: str) -> int | None:
    """Return ``None`` or ``value`` checked by :func:`positive_int`.

    Args:
        value: The argument.
        name: Its name.
    """
    return None if value is None else positive_int(value, name)


def streamed_output(
    batch_size: Any,
    store: str,
    output_dir: Any,
    progress: bool,
    storage_options: Mapping[str, Any] | None,
    client: Any = None,
) -> Output:
    """Return where a streamed call's result goes, its arguments checked.

    Args:
        batch_size: Rows per block, or ``None``.
        store: ``"persistent"`` or ``"memory"``.
        output_dir: Base folder or URL, a zarr store, or ``None``.
        progress: Whether to show a progress bar.
        storage_options: fsspec options for a URL ``output_dir``.
        client: A ``dask.distributed.Client``, or ``None``.
    """
    check_output(store, output_dir, storage_options)
    return Output(
        batch_size=optional_positive_int(batch_size, "batch_size"),
        store=store,
        output_dir=output_dir,
        progress=progress,
        storage_options=storage_options,
        client=client,
    )
