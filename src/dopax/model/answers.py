"""The answer methods of :class:`~dopax.ImpactModel`: ``summarize`` and ``loo``."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import xarray as xr

from dopax.execution.answers import run_loo, run_summary
from dopax.execution.request import (
    LOG_LIKELIHOOD,
    PREDICT,
    LooRequest,
    Output,
    SummaryRequest,
)
from dopax.model.checks import streamed_output
from dopax.model.state import FittedState, require_posterior
from dopax.reductions.draws import INTERVALS

__all__ = ["AnswerMethods"]

#: ``store`` values of the answer methods: Zarr (``"zarr"``, or ``"persistent"``
#: as the streamed methods name it) or ``"memory"``.
_STORES = {"zarr": "persistent", "persistent": "persistent", "memory": "memory"}


def _output(
    store: Any,
    output_dir: Any,
    batch_size: Any,
    progress: bool,
    storage_options: Any,
    client: Any,
) -> Output:
    if store not in _STORES:
        raise ValueError(
            f"`store` must be 'zarr' (a chunked Zarr store, the default) or 'memory'; got "
            f"{store!r}."
        )
    return streamed_output(
        batch_size, _STORES[store], output_dir, progress, storage_options, client
    )


def _probability(value: Any, name: str, *, closed: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number; got {value!r}.")
    prob = float(value)
    ok = 0.0 <= prob <= 1.0 if closed else 0.0 < prob < 1.0
    if not ok or math.isnan(prob):
        where = "in [0, 1]" if closed else "strictly between 0 and 1"
        raise ValueError(f"`{name}` must lie {where}; got {value!r}.")
    return prob


def _quantiles(value: Any) -> tuple[float, ...]:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = (value,)
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise TypeError(
            f"`quantiles` must be a sequence of probabilities, e.g. (0.5,); got {value!r}."
        )
    probs = [_probability(q, "quantiles", closed=True) for q in value]
    return tuple(dict.fromkeys(probs))


class AnswerMethods:
    """``summarize`` and ``loo``: answers reduced where the draws are made.

    A base of :class:`~dopax.ImpactModel`. Each method checks its arguments
    and runs one request on the engine (:mod:`dopax.execution.answers`).
    """

    _state: FittedState

    def summarize(
        self,
        X: Any,
        y: Any = None,
        *,
        prob: float = 0.94,
        interval: str = "eti",
        quantiles: Any = (),
        return_sites: Any = None,
        in_sample: bool = True,
        intervention: Mapping[str, Any] | None = None,
        batch_size: int | None = None,
        rng_key: Any = None,
        output_dir: Any = None,
        store: str = "zarr",
        progress: bool = True,
        storage_options: Mapping[str, Any] | None = None,
        client: Any = None,
        **kwargs: Any,
    ) -> xr.DataTree:
        """Summarise the posterior predictive distribution of every row, without keeping draws.

        Each block of rows is drawn and reduced over its draws inside one
        compiled program; only per-row results leave it, so memory and the
        result grow with rows, not rows x draws. The same ``rng_key`` gives
        the summaries of :meth:`predict_on_batch`'s draws (and of
        :meth:`predict`'s), whatever ``batch_size``.

        Args:
            X: Input with a leading row axis, or an ArrayLoader.
            y: The observed output, one entry per row: adds ``<y>_pit`` (the
                share of draws below the observed value; for discrete outcomes
                ties are broken by a uniform drawn from the row's own key) and
                the root attribute ``coverage`` (the share of observed values
                inside their interval).
            prob: Probability of the interval (ArviZ's default 0.94).
            interval: ``"eti"`` (equal-tailed: the draws' ``(1 - prob) / 2``
                and ``(1 + prob) / 2`` quantiles, NumPy's ``linear`` method) or
                ``"hdi"`` (the narrowest interval of ``floor(prob * S) + 1``
                consecutive sorted draws, as ArviZ defines it).
            quantiles: Extra quantiles, e.g. ``(0.5,)`` (``<site>_q0.5``).
            return_sites: Sites to summarise (default: output and deterministic sites).
            in_sample: Whether ``X`` holds the training rows.
            intervention: Site values imposed with ``numpyro.handlers.do``.
            batch_size: Rows per block (automatic from the memory budget if None).
            rng_key: Key for this call; derived from the model's key if omitted.
            output_dir: Base folder or URL for the call's new sub-folder.
            store: ``"zarr"`` (chunked Zarr, ``"persistent"`` too) or ``"memory"``.
            progress: Whether to show a progress bar.
            storage_options: fsspec options for a URL ``output_dir``.
            client: A ``dask.distributed.Client`` to run the blocks on: each
                task writes its blocks' results into the Zarr result, so
                ``output_dir`` must be a folder the workers share or a URL;
                the driver keeps a few numbers per block.
            **kwargs: Further kernel arguments (arrays with one entry per row
                are batched with ``X``).

        Returns:
            A DataTree whose ``summary`` group holds ``<site>_mean``,
            ``<site>_sd`` (``ddof=1``), ``<site>_lower``, ``<site>_upper`` and
            ``<site>_q<p>`` for each site, over the site's own dimensions,
            chunked by rows.

        Raises:
            ValueError: For ``prob`` or ``quantiles`` outside their range, an
                unknown ``interval``, or ``y`` that does not fit the output site.
        """
        prob = _probability(prob, "prob")
        if interval not in INTERVALS:
            raise ValueError(f"`interval` must be one of {INTERVALS}; got {interval!r}.")
        probs = _quantiles(quantiles)
        output = _output(store, output_dir, batch_size, progress, storage_options, client)
        forward = self._state.request(
            PREDICT,
            "summarize",
            X,
            output,
            rng_key=rng_key,
            kwargs=kwargs,
            intervention=intervention,
            return_sites=return_sites,
            in_sample=in_sample,
        )
        request = SummaryRequest(forward, y, prob, interval, probs)
        return run_summary(self._state.ctx, request)

    def loo(
        self,
        X: Any,
        y: Any = None,
        *,
        reff: float | None = None,
        batch_size: int | None = None,
        rng_key: Any = None,
        output_dir: Any = None,
        store: str = "zarr",
        progress: bool = True,
        storage_options: Mapping[str, Any] | None = None,
        client: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Pareto-smoothed importance-sampling leave-one-out cross-validation, block by block.

        Each block's pointwise log-likelihood is smoothed row by row (PSIS,
        Vehtari, Gelman and Gabry 2017) inside the compiled program that
        computes it, so the draws x rows matrix is never held. Observations
        whose Pareto ``k`` exceeds ArviZ's threshold ``min(1 - 1 / log10(S),
        0.7)`` are counted in a warning.

        Args:
            X: Input with a leading row axis, or an ArrayLoader (holding ``y``).
            y: The observed output, one entry per row.
            reff: Relative effective sample size of the draws; by default 1
                for one chain and, for several, the mean effective sample size
                of the posterior over its draws (as ``arviz.loo`` estimates it).
            batch_size: Rows per block (automatic from the memory budget if None).
            rng_key: Key for latent sites the posterior does not hold.
            output_dir: Base folder or URL for the call's new sub-folder.
            store: ``"zarr"`` (chunked Zarr, ``"persistent"`` too) or ``"memory"``.
            progress: Whether to show a progress bar.
            storage_options: fsspec options for a URL ``output_dir``.
            client: A ``dask.distributed.Client`` to run the blocks on: each
                task writes its blocks' results into the Zarr result, so
                ``output_dir`` must be a folder the workers share or a URL;
                the driver keeps a few numbers per block.
            **kwargs: Further kernel arguments.

        Returns:
            ArviZ's ``ELPDData`` with ``elpd_loo``, ``se``, ``p_loo``,
            ``n_samples``, ``n_data_points``, ``warning``, ``loo_i`` and
            ``pareto_k`` (DataArrays over the output's dimensions, read lazily
            from the result), ``scale`` (``"log"``) and ``good_k``: what
            ``arviz.loo(..., pointwise=True)`` returns, so ``arviz.compare``
            and ``arviz.plot_khat`` take it.

        Raises:
            ImportError: If ArviZ is not installed.
        """
        from dopax.answers.loo import relative_ess, require_arviz

        require_arviz()
        output = _output(store, output_dir, batch_size, progress, storage_options, client)
        posterior = require_posterior(self._state.posterior, "loo")
        if reff is None:
            reff = relative_ess(posterior)
        elif not (isinstance(reff, numbers.Real) and reff > 0):
            raise ValueError(f"`reff` must be a positive number; got {reff!r}.")
        forward = self._state.request(
            LOG_LIKELIHOOD, "loo", X, output, rng_key=rng_key, y=y, kwargs=kwargs
        )
        return run_loo(self._state.ctx, LooRequest(forward, float(reff)))
