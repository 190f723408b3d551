"""MCMC driver: runs a private copy of the user's sampler and keeps its chains."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np
from numpyro.infer import MCMC

__all__ = ["MCMCDriver"]


class MCMCDriver:
    """Runs a private deep copy of an :class:`numpyro.infer.MCMC` object.

    The user's object is never run or modified.

    Args:
        mcmc: The user's MCMC object.
    """

    def __init__(self, mcmc: MCMC) -> None:
        self.template = mcmc
        self.mcmc: MCMC | None = None
        self.args: dict[str, Any] = {}

    @property
    def num_chains(self) -> int:
        """Number of chains."""
        return int(self.template.num_chains)

    def run(
        self,
        key: jax.Array,
        static: tuple[tuple[str, Any], ...],
        args: Mapping[str, Any],
        *,
        progress: bool,
    ) -> None:
        """Run warm-up and sampling on a fresh copy of the sampler.

        Args:
            key: PRNG key.
            static: Static kernel arguments.
            args: Array kernel arguments.
            progress: Whether to show NumPyro's progress bar.
        """
        mcmc = copy.deepcopy(self.template)
        mcmc.progress_bar = bool(progress) and mcmc.progress_bar
        self.args = {**dict(args), **dict(static)}
        mcmc.run(key, **self.args)
        self.mcmc = mcmc

    def continue_chains(self, key: jax.Array, num_samples: int, *, progress: bool) -> None:
        """Draw ``num_samples`` more draws per chain from where the chains stopped.

        Args:
            key: PRNG key (the chains' own state carries their randomness; the
                key seeds the sampler's bookkeeping only).
            num_samples: Draws per chain.
            progress: Whether to show NumPyro's progress bar.
        """
        if self.mcmc is None:
            raise RuntimeError("The sampler has not run.")
        mcmc = copy.copy(self.mcmc)
        mcmc.post_warmup_state = self.mcmc.last_state
        mcmc.num_samples = int(num_samples)
        mcmc.num_warmup = 0
        mcmc.progress_bar = bool(progress) and mcmc.progress_bar
        mcmc.run(mcmc.post_warmup_state.rng_key, **self.args)
        self.mcmc = mcmc

    def draws(self, exclude: Iterable[str] = ()) -> dict[str, np.ndarray]:
        """Return the latest draws, flattened chain-major to ``(chains * draws, ...)``.

        Args:
            exclude: Site names to drop.
        """
        if self.mcmc is None:
            raise RuntimeError("The sampler has not run.")
        samples = self.mcmc.get_samples(group_by_chain=True)
        skip = set(exclude)
        out = {}
        for name, value in samples.items():
            if name in skip:
                continue
            arr = np.asarray(value)
            out[name] = arr.reshape(arr.shape[0] * arr.shape[1], *arr.shape[2:])
        return out

    def diagnostics(self) -> dict[str, float]:
        """Return the last run's divergences, largest split R-hat and smallest bulk ESS.

        R-hat and ESS run over every element of every latent site, chains kept
        apart (one chain is split in halves for R-hat).
        """
        from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

        if self.mcmc is None:
            raise RuntimeError("The sampler has not run.")
        out: dict[str, float] = {}
        extra = self.mcmc.get_extra_fields()
        if "diverging" in extra:
            out["divergences"] = float(np.sum(np.asarray(extra["diverging"])))
        rhat: list[float] = []
        ess: list[float] = []
        for value in self.mcmc.get_samples(group_by_chain=True).values():
            arr = np.asarray(value, dtype=np.float64)
            if arr.shape[1] < 4:
                continue
            rhat.append(float(np.nanmax(split_gelman_rubin(arr))))
            ess.append(float(np.nanmin(effective_sample_size(arr))))
        if rhat:
            out["max_rhat"] = max(rhat)
            out["min_ess"] = min(ess)
        return out
