"""The block programs of the answer methods: a forward pass reduced over every draw of its rows."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Self

from dopax.sampling.forward import ForwardProgram

__all__ = ["DrawReduction"]


@dataclasses.dataclass(frozen=True)
class DrawReduction:
    """A block program that runs a forward pass and reduces each row over all its draws.

    Attributes:
        forward: The forward pass of the block.
    """

    forward: ForwardProgram

    #: Every block holds every draw of its rows (the runner never splits draws).
    whole_draws: ClassVar[bool] = True

    def with_step(self, cells_per_step: int) -> Self:
        """Return the program with the forward pass's draw steps set."""
        forward = dataclasses.replace(self.forward, cells_per_step=cells_per_step)
        return dataclasses.replace(self, forward=forward)
