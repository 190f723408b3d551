"""The :class:`ImpactModel` facade: docstring, argument checks, one request, one call."""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import numpy as np
import xarray as xr

from dopax._warn import warn
from dopax.config import get_config
from dopax.execution.context import ModelContext
from dopax.execution.engine import run_predictive
from dopax.execution.request import (
    LOG_LIKELIHOOD,
    PREDICT,
    PRIOR,
    Output,
    ScenarioRequest,
)
from dopax.execution.scenarios import run_scenarios
from dopax.inference.driver import check_model, make_driver
from dopax.kernel.signature import check_reserved_kwargs, validate_signature
from dopax.kernel.spec import KernelSpec
from dopax.model.answers import AnswerMethods
from dopax.model.checks import positive_int, streamed_output
from dopax.model.contrast import contrast_sides
from dopax.model.fitting import FittingMethods
from dopax.model.state import FittedState, require_posterior
from dopax.sampling.keys import check_key

__all__ = ["ImpactModel"]


class ImpactModel(FittingMethods, AnswerMethods):
    """A NumPyro kernel with its inference method, posterior and outputs.

    Streamed methods (``predict``, ``sample_posterior_predictive``,
    ``sample_prior_predictive``, ``log_likelihood``) share these arguments:
    ``batch_size`` (rows per block; automatic from
    ``ExecutionConfig.memory_budget_bytes`` when ``None``), ``shard_axis``
    (``"obs"`` splits rows across devices, ``"draw"`` draws), ``store``
    (``"persistent"``: chunked Zarr on disk; ``"memory"``), ``output_dir``
    (base folder or fsspec URL for the call's new sub-folder, or an empty zarr
    store; default the model's temporary folder), ``storage_options`` (fsspec
    options for a URL), ``client`` (a ``dask.distributed.Client`` whose
    workers compute the blocks and write them into the store) and
    ``progress`` (a progress bar). Array keyword arguments of the
    kernel whose leading length is the number of rows are batched with ``X``.
    ``summarize`` and ``loo`` reduce each block over its draws where it is
    drawn and keep only per-row answers.

    Args:
        kernel: A NumPyro model function taking ``param_input`` (no default)
            and ``param_output`` (default ``None``), plus any other arguments.
        rng_key: A typed PRNG key (``jax.random.key``). A legacy ``uint32``
            key is converted with a ``UserWarning``.
        inference: A :class:`numpyro.infer.SVI` or :class:`numpyro.infer.MCMC`
            object for ``kernel``. It is never modified.
        param_input: Name of the kernel's input argument.
        param_output: Name of the kernel's output argument and site.
        **legacy: ``svi=`` is accepted in place of ``inference`` with a
            ``DeprecationWarning``.

    Raises:
        KernelValidationError: If the kernel's signature does not fit.
        TypeError: If ``inference`` is neither SVI nor MCMC.
    """

    _live: ClassVar[weakref.WeakSet[ImpactModel]] = weakref.WeakSet()

    def __init__(
        self,
        kernel: Any,
        rng_key: Any = None,
        inference: Any = None,
        *,
        param_input: str = "X",
        param_output: str = "y",
        **legacy: Any,
    ) -> None:
        if "svi" in legacy:
            warn(
                "The `svi` keyword is deprecated; pass the SVI object as `inference`.",
                DeprecationWarning,
            )
            if inference is not None:
                raise TypeError("Pass either `inference` or the deprecated `svi`, not both.")
            inference = legacy.pop("svi")
        if legacy:
            raise TypeError(f"Unexpected keyword argument(s) {sorted(legacy)}.")
        validate_signature(kernel, param_input, param_output)
        if rng_key is None:
            raise TypeError("`rng_key` is required: pass e.g. `jax.random.key(0)`.")
        driver = make_driver(inference, get_config().svi_steps_per_chunk)
        check_model(inference, kernel)
        check_key(rng_key)
        self._inference = inference
        self._state = FittedState(ModelContext(kernel, param_input, param_output), driver, rng_key)
        ImpactModel._live.add(self)

    # ------------------------------------------------------------------ properties
    @property
    def kernel(self) -> Any:
        """The NumPyro model function."""
        return self._state.ctx.kernel

    @property
    def inference(self) -> Any:
        """The SVI or MCMC object given at construction."""
        return self._inference

    @property
    def param_input(self) -> str:
        """Name of the kernel's input argument."""
        return self._state.ctx.param_input

    @property
    def rng_key(self) -> jax.Array:
        """The model's PRNG key (calls derive theirs from it; it never changes)."""
        return self._state.key

    @property
    def kernel_spec(self) -> KernelSpec | None:
        """What the first trace revealed, or ``None`` before it."""
        return self._state.ctx.spec

    @property
    def posterior(self) -> dict[str, np.ndarray] | None:
        """The posterior draws by site, or ``None`` before a fit.

        Each array leads with all draws, chain-major. Draws that a traced fit
        left in its trace are read into memory here. Per-row latent sites of
        a guide that factorises over rows (``AutoNormal``, ``AutoDelta``) are
        not among them: calls draw them block by block from the guide's
        per-row parameters (``vi_result.params``).
        """
        post = self._state.posterior
        return None if post is None else post.in_memory()

    @property
    def temp_dir(self) -> str | None:
        """The model's temporary output folder, created on first need."""
        return self._state.ctx.temp_path

    @property
    def vi_result(self) -> Any:
        """The SVI result (``params``, ``losses``), or ``None``."""
        return self._state.driver.vi_result

    @vi_result.setter
    def vi_result(self, value: Any) -> None:
        """Take an SVI result as the fit's outcome (aimz's manual workflow).

        ``model.vi_result = svi.run(...)`` (or a result with ``params`` and
        ``losses``) makes ``sample``, ``predict`` and the other calls draw
        from the guide with these parameters: with an automatic guide the
        model's posterior becomes 1,000 draws from it at once; a guide that
        needs data draws with ``sample(**data)`` and ``set_posterior_sample``.
        """
        params = getattr(value, "params", None)
        if not isinstance(params, Mapping):
            raise TypeError(
                "`vi_result` must have a `params` dict (e.g. the result of `svi.run(...)`); "
                f"got {type(value).__name__}."
            )
        losses = getattr(value, "losses", None)
        if losses is not None and not np.all(np.isfinite(np.asarray(losses))):
            warn(
                "`vi_result.losses` contains NaN or Inf; the fit may have diverged.", RuntimeWarning
            )
        driver = self._state.driver
        driver.use_result(value)
        drawn = driver.posterior_from_result(self._state.call_key(None), 1000, self._latent_only())
        if drawn is not None:
            self._state.posterior = drawn
            self._state.observed = None

    def is_fitted(self) -> bool:
        """Return whether the model has posterior draws."""
        return self._state.posterior is not None

    def __repr__(self) -> str:
        return (
            f"ImpactModel(kernel={getattr(self.kernel, '__name__', 'kernel')}, "
            f"inference={type(self._inference).__name__}, fitted={self.is_fitted()})"
        )

    def __str__(self) -> str:
        lines = [
            "ImpactModel",
            f"  kernel:     {getattr(self.kernel, '__name__', repr(self.kernel))}",
            f"  inference:  {type(self._inference).__name__}",
            f"  input/output: {self.param_input!r} / {self.param_output!r}",
        ]
        p = self._state.posterior
        if p is None:
            lines.append("  posterior:  none (call fit, fit_on_batch or set_posterior_sample)")
        else:
            lines.append(
                f"  posterior:  {p.num_draws} draws in {p.num_chains} chain(s) of {sorted(p.draws)}"
            )
        return "\n".join(lines)

    # ------------------------------------------------------------------ forward passes
    def _forward(self, kind: str, method: str, X: Any, output: Output, **fields: Any) -> Any:
        """Build the request of a forward pass and run it: every forward method ends here."""
        observed = self._state.observed if kind == PREDICT and fields.get("in_sample") else None
        request = self._state.request(kind, method, X, output, observed=observed, **fields)
        return run_predictive(self._state.ctx, request)

    def sample_prior_predictive_on_batch(
        self,
        X: Any,
        *,
        num_samples: int = 1000,
        rng_key: Any = None,
        return_sites: Any = None,
        return_datatree: bool = True,
        **kwargs: Any,
    ) -> xr.DataTree | dict[str, np.ndarray]:
        """Draw from the prior predictive distribution in memory (no fit needed).

        Args:
            X: Input with a leading row axis, or an ArrayLoader.
            num_samples: Number of draws.
            rng_key: Key for this call; derived from the model's key if omitted.
            return_sites: Sites to return (default: output and deterministic sites).
            return_datatree: Return a DataTree (``prior_predictive``) or a dict.
            **kwargs: Further kernel arguments.

        Returns:
            The draws.
        """
        return self._forward(
            PRIOR,
            "sample_prior_predictive_on_batch",
            X,
            Output(in_memory=True, return_datatree=return_datatree),
            kwargs=kwargs,
            rng_key=rng_key,
            return_sites=return_sites,
            in_sample=False,
            num_samples=positive_int(num_samples, "num_samples"),
        )

    def predict_on_batch(
        self,
        X: Any,
        *,
        intervention: Mapping[str, Any] | None = None,
        rng_key: Any = None,
        in_sample: bool = True,
        return_sites: Any = None,
        return_datatree: bool = True,
        **kwargs: Any,
    ) -> xr.DataTree | dict[str, np.ndarray]:
        """Draw from the posterior predictive distribution in memory.

        Args:
            X: Input with a leading row axis, or an ArrayLoader.
            intervention: Site name to value, imposed with
                ``numpyro.handlers.do``; per-row arrays have one value per row.
                Values are data: a new value does not recompile.
            rng_key: Key for this call; derived from the model's key if omitted.
            in_sample: Whether ``X`` holds the training rows (group
                ``posterior_predictive``) or new rows (group ``predictions``).
            return_sites: Sites to return (default: output and deterministic sites).
            return_datatree: Return a DataTree (with ``posterior``) or a dict.
            **kwargs: Further kernel arguments.

        Returns:
            The draws.
        """
        return self._forward(
            PREDICT,
            "predict_on_batch",
            X,
            Output(in_memory=True, return_datatree=return_datatree),
            kwargs=kwargs,
            rng_key=rng_key,
            intervention=intervention,
            return_sites=return_sites,
            in_sample=in_sample,
        )

    def sample_posterior_predictive_on_batch(
        self, X: Any, **kwargs: Any
    ) -> xr.DataTree | dict[str, np.ndarray]:
        """In-sample :meth:`predict_on_batch` (same arguments, without ``in_sample``).

        Args:
            X: Input with a leading row axis, or an ArrayLoader.
            **kwargs: Arguments of :meth:`predict_on_batch` and further kernel arguments.

        Returns:
            The draws, as :meth:`predict_on_batch` returns them.
        """
        if "in_sample" in kwargs:
            raise TypeError(
                "`sample_posterior_predictive_on_batch` is in sample; drop `in_sample`."
            )
        return self.predict_on_batch(X, in_sample=True, **kwargs)

    def sample_prior_predictive(
        self,
        X: Any,
        *,
        num_samples: int = 1000,
        rng_key: Any = None,
        return_sites: Any = None,
        batch_size: int | None = None,
        shard_axis: str = "obs",
        store: str = "persistent",
        output_dir: Any = None,
        progress: bool = True,
        storage_options: Mapping[str, Any] | None = None,
        client: Any = None,
        **kwargs: Any,
    ) -> xr.DataTree:
        """Stream prior predictive draws in chunks (Zarr on disk by default).

        Args:
            X: Input with a leading row axis, or an ArrayLoader.
            num_samples: Number of draws.
            rng_key: Key for this call; derived from the model's key if omitted.
            return_sites: Sites to return (default: output and deterministic sites).
            batch_size: Rows per block (see the class docstring).
            shard_axis: ``"obs"`` or ``"draw"``.
            store: ``"persistent"`` or ``"memory"``.
            output_dir: Base folder or URL for the call's sub-folder.
            progress: Whether to show a progress bar.
            storage_options: fsspec options for a URL ``output_dir``.
            client: A ``dask.distributed.Client`` to run the blocks on.
            **kwargs: Further kernel arguments.

        Returns:
            A DataTree with the ``prior_predictive`` group.
        """
        return self._forward(  # type: ignore[no-any-return]
            PRIOR,
            "sample_prior_predictive",
            X,
            streamed_output(batch_size, store, output_dir, progress, storage_options, client),
            kwargs=kwargs,
            rng_key=rng_key,
            return_sites=return_sites,
            in_sample=False,
            num_samples=positive_int(num_samples, "num_samples"),
            shard_axis=shard_axis,
        )

    def predict(
        self,
        X: Any,
        *,
        intervention: Mapping[str, Any] | None = None,
        rng_key: Any = None,
        in_sample: bool = True,
        return_sites: Any = None,
        batch_size: int | None = None,
        shard_axis: str = "obs",
        store: str = "persistent",
        output_dir: Any = None,
        progress: bool = True,
        storage_options: Mapping[str, Any] | None = None,
        client: Any = None,
        **kwargs: Any,
    ) -> xr.DataTree:
        """Stream posterior predictive draws in chunks (Zarr on disk by default).

        Draws equal those of :meth:`predict_on_batch` with the same key,
        whatever ``batch_size``, ``shard_axis``, ``store`` or device count.

        Args:
            X: Input with a leading row axis, or an ArrayLoader.
            intervention: See :meth:`predict_on_batch`.
            rng_key: Key for this call; derived from the model's key if omitted.
            in_sample: Group ``posterior_predictive`` (True) or ``predictions``.
            return_sites: Sites to return (default: output and deterministic sites).
            batch_size: Rows per block (see the class docstring).
            shard_axis: ``"obs"`` or ``"draw"``.
            store: ``"persistent"`` or ``"memory"``.
            output_dir: Base folder or URL for the call's sub-folder.
            progress: Whether to show a progress bar.
            storage_options: fsspec options for a URL ``output_dir``.
            client: A ``dask.distributed.Client`` to run the blocks on.
            **kwargs: Further kernel arguments.

        Returns:
            A DataTree with the predictive group and ``posterior``.
        """
        return self._forward(  # type: ignore[no-any-return]
            PREDICT,
            "predict",
            X,
            streamed_output(batch_size, store, output_dir, progress, storage_options, client),
            kwargs=kwargs,
            rng_key=rng_key,
            intervention=intervention,
            return_sites=return_sites,
            in_sample=in_sample,
            shard_axis=shard_axis,
        )

    def sample_posterior_predictive(self, X: Any, **kwargs: Any) -> xr.DataTree:
        """In-sample :meth:`predict` (same arguments, without ``in_sample``).

        Args:
            X: Input with a leading row axis, or an ArrayLoader.
            **kwargs: Arguments of :meth:`predict` and further kernel arguments.

        Returns:
            A DataTree with the ``posterior_predictive`` group and ``posterior``.
        """
        if "in_sample" in kwargs:
            raise TypeError("`sample_posterior_predictive` is in sample; drop `in_sample`.")
        return self.predict(X, in_sample=True, **kwargs)

    def log_likelihood(
        self,
        X: Any,
        y: Any = None,
        *,
        batch_size: int | None = None,
        shard_axis: str = "obs",
        store: str = "persistent",
        output_dir: Any = None,
        progress: bool = True,
        storage_options: Mapping[str, Any] | None = None,
        client: Any = None,
        **kwargs: Any,
    ) -> xr.DataTree:
        """Stream the pointwise log-likelihood of every observed site.

        Args:
            X: Input with a leading row axis, or an ArrayLoader.
            y: Observed output, one entry per row.
            batch_size: Rows per block (see the class docstring).
            shard_axis: ``"obs"`` or ``"draw"``.
            store: ``"persistent"`` or ``"memory"``.
            output_dir: Base folder or URL for the call's sub-folder.
            progress: Whether to show a progress bar.
            storage_options: fsspec options for a URL ``output_dir``.
            client: A ``dask.distributed.Client`` to run the blocks on.
            **kwargs: Further kernel arguments.

        Returns:
            A DataTree with ``log_likelihood`` and ``posterior``.
        """
        return self._forward(  # type: ignore[no-any-return]
            LOG_LIKELIHOOD,
            "log_likelihood",
            X,
            streamed_output(batch_size, store, output_dir, progress, storage_options, client),
            y=y,
            kwargs=kwargs,
            shard_axis=shard_axis,
        )

    # ------------------------------------------------------------------ effects
    def estimate_effect(
        self,
        output_baseline: Any = None,
        output_intervention: Any = None,
        args_baseline: Mapping[str, Any] | None = None,
        args_intervention: Mapping[str, Any] | None = None,
        *,
        on_batch: bool = False,
    ) -> xr.DataTree:
        """Return intervention minus baseline, draw by draw.

        Each side is a result tree (from :meth:`predict` or
        :meth:`predict_on_batch`) or a dict of :meth:`predict` arguments. Sides
        computed here share one key, so they share their random numbers and
        observation noise cancels in the contrast.

        Args:
            output_baseline: Baseline result tree.
            output_intervention: Intervention result tree.
            args_baseline: :meth:`predict` arguments for the baseline.
            args_intervention: :meth:`predict` arguments for the intervention.
            on_batch: Compute sides given as arguments with
                :meth:`predict_on_batch` instead of :meth:`predict`.

        Returns:
            A tree with the same group as the sides holding the differences.
        """
        return contrast_sides(
            self,
            (output_baseline, args_baseline),
            (output_intervention, args_intervention),
            on_batch=on_batch,
            shared_key=self._state.call_key,
            num_chains=self._state.posterior.num_chains if self._state.posterior else 1,
        )

    def compare_scenarios(
        self,
        X: Any,
        scenarios: Mapping[str, Mapping[str, Any]],
        *,
        baseline: str,
        site: str | None = None,
        by: Any = None,
        interval: float = 0.94,
        keep_draws: bool = False,
        rng_key: Any = None,
        batch_size: int | None = None,
        store: str = "persistent",
        output_dir: Any = None,
        progress: bool = True,
        storage_options: Mapping[str, Any] | None = None,
        client: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Compare scenarios in one streamed pass with shared random numbers.

        Every scenario runs on each block of rows with the same random
        numbers, on every local device, and only reductions are kept: per
        draw each scenario's mean outcome and each contrast against
        ``baseline`` (absolute and relative), per group of ``by``, and per
        row the posterior mean and a central interval of each contrast.

        Args:
            X: Base input with a leading row axis.
            scenarios: Scenario name to a dict of kernel inputs to override
                (e.g. ``{"t": ones}``, ``{"t": 1.0}`` for every row, or
                ``{"X": X_new}``) and/or ``"intervention"``: a dict of site values.
            baseline: Name of the scenario every other one is contrasted with.
            site: Outcome site (default: the output site; a discrete one warns
                that its per-row intervals are whole numbers).
            by: One group label per row for conditional effects, or ``None``;
                groups keep a categorical's order, numbers ascend, text sorts
                naturally; missing labels are an error.
            interval: Central interval probability of per-row contrasts.
            keep_draws: Also stream every scenario's draws of ``site`` (a
                ``scenario_draws`` child with a ``scenario`` dimension).
            rng_key: Key for this call; derived from the model's key if omitted.
            batch_size: Rows per block (automatic from the memory budget if None).
            store: Where kept draws go: ``"persistent"`` or ``"memory"``.
            output_dir: Base folder or URL for the kept draws' new sub-folder.
            progress: Whether to show a progress bar.
            storage_options: fsspec options for a URL ``output_dir``.
            client: A ``dask.distributed.Client`` to run the blocks on.
            **kwargs: Base kernel arguments shared by the scenarios.

        Returns:
            An :class:`~dopax.effects.EffectResult` with ``summary()`` and ``plot()``.
        """
        posterior = require_posterior(self._state.posterior, "compare_scenarios")
        output = streamed_output(batch_size, store, output_dir, progress, storage_options, client)
        check_reserved_kwargs(kwargs, self.kernel, self.param_input, self.param_output)
        request = ScenarioRequest(
            key=self._state.call_key(rng_key),
            X=X,
            scenarios=scenarios,
            baseline=baseline,
            site=site,
            by=by,
            interval=interval,
            keep_draws=keep_draws,
            kwargs=kwargs,
            posterior=posterior,
            output=output,
        )
        return run_scenarios(self._state.ctx, request)

    # ------------------------------------------------------------------ lifecycle
    def cleanup(self) -> None:
        """Remove the model's temporary folder (results read from it then raise)."""
        self._state.ctx.remove_temp()

    @classmethod
    def cleanup_models(cls) -> None:
        """Call :meth:`cleanup` on every live model."""
        for model in list(cls._live):
            model.cleanup()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        ImpactModel._live.add(self)
