"""MCMC driver: runs a private copy of the user's sampler and keeps its chains."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from numpyro.infer import HMC, MCMC

from dopax.inference.sample_stats import STAT_NAMES, arviz_stats
from dopax.inference.segments import run_to_trace

if TYPE_CHECKING:
    from dopax.inference.trace import ZarrTrace

__all__ = ["MCMCDriver"]


def _stat_fields(mcmc: MCMC) -> tuple[str, ...]:
    """The ``extra_fields`` that give the sample statistics (HMC and NUTS only)."""
    if isinstance(mcmc.sampler, HMC):
        return tuple(field for field in STAT_NAMES if field != "diverging")
    return ()


def _is_nuts(mcmc: MCMC) -> bool:
    return getattr(mcmc.sampler, "_algo", None) == "NUTS"


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
        self._last_state: Any = None
        # When they come from a trace: the draws flat over chains, left in the
        # trace's store (read a block at a time), and the statistics, flat too.
        self._samples: dict[str, Any] | None = None
        self._stats: dict[str, np.ndarray] | None = None

    @property
    def num_chains(self) -> int:
        """Number of chains."""
        return int(self.template.num_chains)

    @property
    def last_state(self) -> Any:
        """The sampler state after the latest draw (``None`` before any run)."""
        return self._last_state

    def run(
        self,
        key: jax.Array,
        static: tuple[tuple[str, Any], ...],
        args: Mapping[str, Any],
        *,
        progress: bool,
        num_samples: int | None = None,
    ) -> None:
        """Run warm-up and sampling on a fresh copy of the sampler.

        Args:
            key: PRNG key.
            static: Static kernel arguments.
            args: Array kernel arguments.
            progress: Whether to show NumPyro's progress bar.
            num_samples: Draws per chain, or ``None`` for the MCMC object's own.
        """
        mcmc = copy.deepcopy(self.template)
        if num_samples is not None:
            mcmc.num_samples = int(num_samples)
        mcmc.progress_bar = bool(progress) and mcmc.progress_bar
        self.args = {**dict(args), **dict(static)}
        mcmc.run(key, extra_fields=_stat_fields(mcmc), **self.args)
        self._keep(mcmc)

    def run_to_trace(
        self,
        trace: ZarrTrace,
        key: jax.Array,
        static: tuple[tuple[str, Any], ...],
        args: Mapping[str, Any],
        *,
        progress: bool,
    ) -> None:
        """Run, resume or extend a run streamed to ``trace`` (see :func:`run_to_trace`).

        Args:
            trace: The trace.
            key: PRNG key of a new run (a trace that holds a run uses its own).
            static: Static kernel arguments.
            args: Array kernel arguments.
            progress: Whether to show a progress bar.
        """
        result = run_to_trace(self.template, trace, key, static, args, progress=progress)
        self.args = {**dict(args), **dict(static)}
        # A never-run copy: `continue_chains` starts it from the trace's last state.
        self.mcmc = copy.deepcopy(self.template)
        self._last_state = result.last_state
        self._samples = dict(result.posterior)
        self._stats = dict(result.sample_stats)

    def _keep(self, mcmc: MCMC) -> None:
        self.mcmc = mcmc
        self._last_state = mcmc.last_state
        self._samples = None
        self._stats = None

    def continue_chains(self, key: jax.Array, num_samples: int, *, progress: bool) -> None:
        """Draw ``num_samples`` more draws per chain from where the chains stopped.

        Args:
            key: PRNG key (the chains' own state carries their randomness; the
                key seeds the sampler's bookkeeping only).
            num_samples: Draws per chain.
            progress: Whether to show NumPyro's progress bar.
        """
        if self.mcmc is None or self._last_state is None:
            raise RuntimeError("The sampler has not run.")
        mcmc = copy.copy(self.mcmc)
        mcmc.post_warmup_state = self._last_state
        mcmc.num_samples = int(num_samples)
        mcmc.num_warmup = 0
        mcmc.progress_bar = bool(progress) and mcmc.progress_bar
        mcmc.run(mcmc.post_warmup_state.rng_key, extra_fields=_stat_fields(mcmc), **self.args)
        self._keep(mcmc)

    def draws(self, exclude: Iterable[str] = ()) -> dict[str, Any]:
        """Return the latest draws, flattened chain-major to ``(chains * draws, ...)``.

        Draws of a traced run stay in the trace
        (:class:`~dopax.inference.posterior.ChainMajorDraws`).

        Args:
            exclude: Site names to drop.
        """
        skip = set(exclude)
        if self._samples is not None:
            return {name: value for name, value in self._samples.items() if name not in skip}
        if self.mcmc is None or self._last_state is None:
            raise RuntimeError("The sampler has not run.")
        samples = self.mcmc.get_samples(group_by_chain=True)
        return _flatten({name: value for name, value in samples.items() if name not in skip})

    def sample_stats(self) -> dict[str, np.ndarray]:
        """Return the latest run's sample statistics under ArviZ's names, flattened chain-major.

        ``diverging``, ``energy``, ``lp`` (the potential energy negated),
        ``n_steps`` (and ``tree_depth`` for NUTS), ``acceptance_rate`` and
        ``step_size``; only ``diverging`` for samplers other than HMC and NUTS.
        """
        if self._stats is not None:
            return dict(self._stats)
        if self.mcmc is None or self._last_state is None:
            raise RuntimeError("The sampler has not run.")
        fields = self.mcmc.get_extra_fields(group_by_chain=True)
        return _flatten(arviz_stats(fields, nuts=_is_nuts(self.mcmc)))

    def diagnostics(self) -> dict[str, float]:
        """Return the latest run's divergences, largest split R-hat and smallest bulk ESS.

        R-hat and ESS run over every element of every latent site, chains kept
        apart (one chain is split in halves for R-hat).
        """
        from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

        out: dict[str, float] = {}
        stats = self.sample_stats()
        if "diverging" in stats:
            out["divergences"] = float(np.sum(stats["diverging"]))
        rhat: list[float] = []
        ess: list[float] = []
        for value in self.draws().values():  # one site in memory at a time
            flat = np.asarray(value, dtype=np.float64)
            arr = flat.reshape(self.num_chains, -1, *flat.shape[1:])
            if arr.shape[1] < 4:
                continue
            rhat.append(float(np.nanmax(split_gelman_rubin(arr))))
            ess.append(float(np.nanmin(effective_sample_size(arr))))
        if rhat:
            out["max_rhat"] = max(rhat)
            out["min_ess"] = min(ess)
        return out


def _flatten(grouped: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for name, value in grouped.items():
        arr = np.asarray(value)
        out[name] = arr.reshape(arr.shape[0] * arr.shape[1], *arr.shape[2:])
    return out
