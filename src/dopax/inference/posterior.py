"""Posterior draws as the engine consumes them: flat over chains, chain-major."""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Posterior"]


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

    def by_chain(self) -> dict[str, np.ndarray]:
        """Return the draws shaped ``(chain, draw, ...)``: the one place they are reshaped."""
        return {
            k: np.asarray(v).reshape(self.num_chains, -1, *np.shape(v)[1:])
            for k, v in self.draws.items()
        }
