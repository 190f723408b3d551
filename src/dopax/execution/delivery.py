"""What a job's blocks deliver, where to, and what the call returns.

Forward passes, reductions and scenario comparisons run the same way (see
:mod:`dopax.execution.executor`); a :class:`Delivery` is what tells them apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from dopax.execution.request import Output
from dopax.execution.runner import Consume
from dopax.output.schema import SiteLayout
from dopax.streaming.sinks import StaticData
from dopax.streaming.stream import Submit
from dopax.streaming.targets import TempFolder

__all__ = ["Delivery"]


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
            writers' ``submit`` (``None`` when nothing is stored).
        done: Called once every block has run here (what the consumer
            holds back is taken then).
        abort: Called when a block run here fails.
        finish: Turns the finished result (``None`` when nothing is stored)
            into the call's return value; if it fails, the result is removed.
        late_attrs: Returns root attributes that depend on every block.
        collect: On a cluster, receives the tasks' per-block reductions in
            block order (the tasks then reduce their blocks rather than
            write them; see :func:`~dopax.execution.cluster.run_on_cluster`).
        driver_writes: On a cluster, small variables the driver writes
            itself, as ``(layout, index, values)``.
        stored: Whether there is a result to store; without one the blocks
            only feed the consumer.
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
    consumer: Callable[[Submit | None], Consume]
    done: Callable[[], None] | None = None
    abort: Callable[[], None] | None = None
    finish: Callable[[xr.DataTree | None], Any] | None = None
    late_attrs: Callable[[], Mapping[str, Any]] | None = None
    collect: Callable[[list[Any]], None] | None = None
    driver_writes: Sequence[tuple[SiteLayout, tuple[slice, ...], np.ndarray]] = ()
    stored: bool = True
