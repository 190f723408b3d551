"""The fitted state of a model: one record, checked by one helper."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import weakref
from typing import Any

import numpy as np

from dopax.exceptions import NotFittedError

__all__ = ["Posterior", "TempFolder", "require_posterior"]


@dataclasses.dataclass(frozen=True)
class Posterior:
    """Posterior draws, flat over chains (chain-major).

    Attributes:
        draws: Site name to array with a leading flat draw axis.
        num_chains: Number of chains the draws hold.
    """

    draws: dict[str, np.ndarray]
    num_chains: int = 1

    @property
    def num_draws(self) -> int:
        """Total number of draws (all chains)."""
        return int(next(iter(self.draws.values())).shape[0])


def require_posterior(posterior: Posterior | None, method: str) -> Posterior:
    """Return ``posterior`` or raise :class:`NotFittedError` saying what to call first.

    Args:
        posterior: The model's posterior, if any.
        method: The method that needs it.
    """
    if posterior is None:
        raise NotFittedError(
            f"`{method}` needs posterior draws, but the model has none. Call `fit`, "
            "`fit_on_batch` or `set_posterior_sample` first."
        )
    return posterior


class TempFolder:
    """A temporary folder removed when no model or result references it any more.

    Results read lazily from inside it keep a reference, so the folder outlives
    the model for as long as a result needs it; :meth:`remove` deletes it at once.
    """

    def __init__(self) -> None:
        self.path = tempfile.mkdtemp(prefix="dopax-")
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.path, True)

    def remove(self) -> None:
        """Delete the folder now."""
        self._finalizer()

    @property
    def alive(self) -> bool:
        """Whether the folder has not been removed."""
        return self._finalizer.alive

    def __reduce__(self) -> Any:
        raise TypeError("A temporary output folder cannot be pickled.")
