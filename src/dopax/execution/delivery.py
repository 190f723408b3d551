"""What a job's blocks deliver, where to, and what the call returns.

Forward passes, reductions and scenario comparisons run the same way (see
:mod:`dopax.execution.executor`); a :class:`Delivery` is what tells them apart.
A forward pass streams every output of its blocks; a reducing job (the
answers, a scenario comparison) has a :class:`BlockReduction`, which says what
each block writes and what small record of it the driver keeps, wherever the
block ran.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import xarray as xr

from dopax.execution.request import Output
from dopax.execution.runner import Block, Consume
from dopax.output.schema import SiteLayout
from dopax.streaming.sinks import StaticData
from dopax.streaming.stream import Submit
from dopax.streaming.targets import TempFolder

__all__ = ["BlockReduction", "Delivery"]


class BlockReduction(Protocol):
    """What each block of a reducing job writes and what the driver keeps of it.

    The same object serves blocks run here and blocks run in a cluster's
    tasks (it is shipped to the workers, so it must pickle); the driver
    receives the records in block order either way, so the call's totals
    are the same wherever its blocks ran.
    """

    def write(self, block: Block, outputs: dict[str, Any], submit: Submit) -> None:
        """Hand the block's stored outputs to ``submit(group, name, index, value)``."""

    def record(self, block: Block, outputs: dict[str, Any]) -> Any:
        """Return what the driver keeps of the block, as host values (no draws x rows)."""


@dataclasses.dataclass
class Delivery:
    """What a job's blocks deliver, where to, and what the call returns.

    Attributes:
        output: Where the result goes (``store``, ``output_dir``, ...) and
            the call's execution settings.
        temp_folder: Returns the model's temporary folder (the default
            ``output_dir``).
        label: The call's label (its progress bar).
        folder: The name its new folder starts with (``<folder>-<time>-<id>.zarr``).
        group: The result group the streamed outputs go to.
        layouts: The variables streamed into the result.
        static: Small groups written whole (the posterior), or ``None``.
        attrs: The result's root attributes.
        total: Units of progress of the whole call.
        progress_of: Units of progress of a block of ``(rows, draws)``.
        consumer: Returns the consumer of each block's outputs, given the
            writers' ``submit``: a forward pass's (``None`` with a ``reduction``).
        reduction: A reducing job's blocks: what each writes and what the
            driver keeps of it (``None`` for a forward pass).
        collect: Receives the records of the ``reduction``, in block order:
            one block behind the runner here (so the device computes the
            next block while the host reads the last), a task's blocks at
            a time on a cluster, once every task before it has finished.
        finish: Turns the finished result (``None`` when nothing is stored)
            into the call's return value; if it fails, the result is removed.
        late_attrs: Returns root attributes that depend on every block
            (called once every block has run and been collected).
        driver_writes: On a cluster, small variables the driver writes
            itself, as ``(layout, index, values)``.
        stored: Whether there is a result to store; without one the blocks
            only feed the consumer, or the reduction's records.
    """

    output: Output
    temp_folder: Callable[[], TempFolder]
    label: str
    folder: str
    group: str
    layouts: Sequence[SiteLayout]
    static: StaticData | None
    attrs: Mapping[str, Any]
    total: int
    progress_of: Callable[[int, int], int]
    consumer: Callable[[Submit], Consume] | None = None
    reduction: BlockReduction | None = None
    collect: Callable[[list[Any]], None] | None = None
    finish: Callable[[xr.DataTree | None], Any] | None = None
    late_attrs: Callable[[], Mapping[str, Any]] | None = None
    driver_writes: Sequence[tuple[SiteLayout, tuple[slice, ...], np.ndarray]] = ()
    stored: bool = True
