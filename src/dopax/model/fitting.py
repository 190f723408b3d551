"""The fitting and posterior methods of :class:`~dopax.ImpactModel`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import xarray as xr

from dopax._warn import warn
from dopax.config import get_config
from dopax.data import ArrayLoader
from dopax.exceptions import KernelValidationError
from dopax.inference.driver import BatchFit, SampleCall
from dopax.inference.posterior import Posterior
from dopax.model.checks import optional_positive_int, positive_int
from dopax.model.state import FittedState
from dopax.output import schema
from dopax.output.build import build_tree
from dopax.sampling.explain import InputSchema, check_observed_shape

__all__ = ["FittingMethods"]


class FittingMethods:
    """``fit``, ``fit_on_batch``, ``train_on_batch``, ``sample`` and ``set_posterior_sample``.

    A base of :class:`~dopax.ImpactModel`; each method is argument checks and
    one call to the model's fit driver (:mod:`dopax.inference.driver`).
    """

    _state: FittedState

    @property
    def param_output(self) -> str:
        """Name of the kernel's output argument and site."""
        return self._state.ctx.param_output

    def _latent_only(self) -> set[str]:
        """Sites left out of posterior draws: the output and deterministic sites."""
        spec = self._state.ctx.spec
        return {self.param_output, *(spec.return_sites if spec else ())}

    def fit(
        self,
        X: Any,
        y: Any = None,
        *,
        num_samples: int = 1000,
        rng_key: Any = None,
        progress: bool = True,
        batch_size: int | None = None,
        epochs: int = 1,
        shuffle: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Fit the kernel with SVI over mini-batches, then draw posterior samples.

        With ``batch_size=None`` the data are used whole and steps continue
        until the loss settles (at least ``1000 * epochs`` steps, at most
        20,000); with a ``batch_size`` exactly ``epochs`` passes of
        mini-batches run. Either way a ``UserWarning`` says so when the loss
        was still falling at the end.

        Args:
            X: Input with a leading row axis, or an
                :class:`~dopax.data.ArrayLoader` (then ``y`` must be ``None``;
                its field ``param_input`` binds to the input, the others by
                name; its own batch size and shuffling are used).
            y: Output, one entry per row.
            num_samples: Posterior draws to take from the guide at the end.
            rng_key: Key for this call; derived from the model's key if omitted.
            progress: Whether to show a progress bar with the loss.
            batch_size: Rows per mini-batch, or ``None`` for full-batch steps.
            epochs: Passes over the data (minimum passes when ``batch_size`` is None).
            shuffle: Whether to shuffle rows every epoch.
            **kwargs: Further kernel arguments.

        Returns:
            The model itself.
        """
        from dopax.inference.svi import still_falling

        svi = self._state.driver.svi("fit")
        num_samples = positive_int(num_samples, "num_samples")
        epochs = positive_int(epochs, "epochs")
        batch_size = optional_positive_int(batch_size, "batch_size")
        loader = X if isinstance(X, ArrayLoader) else None
        if loader is not None and batch_size is not None:
            raise ValueError(
                "`batch_size` is set by the ArrayLoader passed as `X`; leave `batch_size` None."
            )
        bound = self._bind_fit(X, y, kwargs, "fit")
        self._state.posterior = svi.fit(
            self._state.call_key(rng_key),
            bound,
            batch_size=batch_size,
            epochs=epochs,
            shuffle=shuffle,
            loader=loader,
            num_samples=num_samples,
            progress=progress,
            exclude=self._latent_only(),
        )
        self._fitted_on(bound)
        losses = svi.vi_result.losses if svi.vi_result is not None else np.zeros(0)
        if still_falling(losses):
            warn(
                f"The SVI loss was still falling when `fit` stopped after {len(losses)} steps; "
                "the posterior may be under-fitted. Increase `epochs` (or use `fit_on_batch` "
                "with more `num_steps`).",
                UserWarning,
            )
        return self

    def _bind_fit(self, X: Any, y: Any, kwargs: Mapping[str, Any], method: str) -> Any:
        ctx = self._state.ctx
        bound = ctx.bind(X, y, kwargs, get_config())
        if self.param_output not in bound.rows:
            raise ValueError(
                f"`{method}` needs the observed output: pass `y` with one entry per row of "
                f"`X`, or an ArrayLoader with the field {self.param_output!r}."
            )
        spec = ctx.ensure_spec(bound, fitting=True)
        y = bound.rows[self.param_output]
        check_observed_shape(ctx.probe(bound), self.param_output, y, bound.n_rows)
        if not spec.sample_sites:
            raise KernelValidationError(
                f"The kernel has no latent sample site (every sample site is observed), so "
                f"`{method}` has nothing to fit. Add a latent site (e.g. `numpyro.sample("
                "'sigma', dist.HalfNormal(1))`), or draw from the kernel as it is with "
                "`sample_prior_predictive`."
            )
        return bound

    def fit_on_batch(
        self,
        X: Any,
        y: Any,
        *,
        num_steps: int = 10000,
        num_samples: int = 1000,
        rng_key: Any = None,
        progress: bool = True,
        trace: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Fit on one in-memory batch: SVI resumes from its last state; MCMC runs the sampler.

        Args:
            X: Input with a leading row axis.
            y: Output, one entry per row.
            num_steps: SVI steps (ignored by MCMC, whose object sets its own).
            num_samples: Posterior draws to take from the guide (SVI).
            rng_key: Key for this call; derived from the model's key if omitted.
            progress: Whether to show a progress bar.
            trace: A :class:`dopax.ZarrTrace` (MCMC only): stream the run to it
                in segments, or resume or extend the run it holds.
            **kwargs: Further kernel arguments.

        Returns:
            The model itself.
        """
        num_steps = positive_int(num_steps, "num_steps")
        num_samples = positive_int(num_samples, "num_samples")
        bound = self._bind_fit(X, y, kwargs, "fit_on_batch")
        call = BatchFit(num_steps, num_samples, progress, self._latent_only(), trace)
        self._state.posterior = self._state.driver.fit_on_batch(
            self._state.call_key(rng_key), bound, call
        )
        self._fitted_on(bound)
        return self

    def _fitted_on(self, bound: Any) -> None:
        """Keep what a fit was run on: its output (for ``observed_data``), its input shapes."""
        self._state.observed = np.asarray(bound.rows[self.param_output])
        self._state.ctx.fitted_inputs = InputSchema.of(bound.rows, bound.shared)

    def train_on_batch(self, X: Any, y: Any, rng_key: Any = None, **kwargs: Any) -> tuple[Any, Any]:
        """Run one compiled SVI update step on a batch (compiled once per batch shape).

        Args:
            X: Input batch.
            y: Output batch.
            rng_key: Key used to initialise SVI on the first call.
            **kwargs: Further kernel arguments.

        Returns:
            ``(svi_state, loss)``.
        """
        svi = self._state.driver.svi("train_on_batch")
        ctx = self._state.ctx
        bound = ctx.bind(X, y, kwargs, get_config())
        if ctx.spec is None:
            ctx.ensure_spec(bound, fitting=True)
        key = self._state.call_key(rng_key) if svi.state is None else self._state.key
        return svi.step(key, bound)

    def sample(
        self,
        *,
        num_samples: int = 1000,
        rng_key: Any = None,
        return_sites: Any = None,
        return_datatree: bool = True,
        **kwargs: Any,
    ) -> xr.DataTree | dict[str, np.ndarray]:
        """Draw posterior samples: from the guide (SVI) or by continuing the chains (MCMC).

        The model's own posterior is not replaced (see :meth:`set_posterior_sample`).

        With MCMC and the kernel's input and output among ``kwargs`` (e.g.
        ``sample(X=X, y=y)``), the sampler warms up and draws the posterior
        given those data (``num_samples`` per chain); without data it
        continues the chains where they stopped, on the data they ran on.

        Args:
            num_samples: Draws (per chain for MCMC).
            rng_key: Key for this call; derived from the model's key if omitted.
            return_sites: Sites to keep (default: all latent sites).
            return_datatree: Return a DataTree (``posterior`` group) or a dict.
            **kwargs: Kernel arguments: for guides that need data (SVI), or
                the data to sample the posterior of (MCMC).

        Returns:
            The draws.
        """
        num_samples = positive_int(num_samples, "num_samples")
        bound = None
        name_in = self._state.ctx.param_input
        if name_in in kwargs and self.param_output in kwargs:
            data = dict(kwargs)
            X, y = data.pop(name_in), data.pop(self.param_output)
            bound = self._bind_fit(X, y, data, "sample")
        key = self._state.call_key(rng_key)
        call = SampleCall(num_samples, kwargs, self._latent_only(), bound)
        post = self._state.driver.sample(key, call)
        draws = post.draws
        if return_sites is not None:
            names: Any = [return_sites] if isinstance(return_sites, str) else return_sites
            names = list(names) if isinstance(names, Iterable) else []
            if not names or not all(isinstance(n, str) for n in names):
                raise TypeError(
                    "`return_sites` must be a site name or a sequence of site names (e.g. "
                    f"`return_sites=['beta']`); got {return_sites!r}."
                )
            unknown = sorted(set(names) - set(draws))
            if unknown:
                raise KeyError(f"Unknown return site(s) {unknown}; available: {sorted(draws)}.")
            draws = {k: draws[k] for k in names}
        if not return_datatree:
            return draws
        groups = {schema.POSTERIOR: draws}
        stats = self._state.driver.sample_stats()
        if stats is not None:
            groups[schema.SAMPLE_STATS] = stats
        return build_tree(groups, post.num_chains)

    def set_posterior_sample(self, posterior_sample: Mapping[str, Any]) -> Any:
        """Use externally obtained posterior draws.

        Args:
            posterior_sample: Site name to array; every array at least 1-D with
                one shared leading (draw) size. The output site is dropped with
                a warning.

        Returns:
            The model itself.

        Raises:
            TypeError: If it is not a mapping.
            ValueError: If empty, or arrays are 0-D or differ in leading size.
        """
        if not isinstance(posterior_sample, Mapping):
            raise TypeError(
                "`posterior_sample` must be a dict of site name to array; got "
                f"{type(posterior_sample).__name__}."
            )
        draws = {str(k): np.asarray(v) for k, v in posterior_sample.items()}
        if self.param_output in draws:
            warn(
                f"`posterior_sample` holds the output site {self.param_output!r}; it is dropped "
                "(outputs are predicted, not substituted).",
                UserWarning,
            )
            draws.pop(self.param_output)
        if not draws:
            raise ValueError("`posterior_sample` is empty; pass at least one site's draws.")
        scalars = sorted(k for k, v in draws.items() if v.ndim == 0)
        if scalars:
            raise ValueError(
                f"`posterior_sample` site(s) {scalars} are 0-D; every array needs a leading "
                "draw axis."
            )
        sizes = {k: v.shape[0] for k, v in draws.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(
                f"`posterior_sample` arrays must share one leading (draw) size; got {sizes}."
            )
        # ``numpyro.param`` sites keep the SVI parameters the model holds (its fit's,
        # or a ``vi_result`` set by hand), as the draws were taken with them
        self._state.posterior = Posterior(draws, 1, self._state.driver.current_params())
        self._state.observed = None
        return self
