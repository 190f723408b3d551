"""The :class:`ImpactModel` estimator: fit a NumPyro kernel, sample, intervene, stream."""

from __future__ import annotations

import itertools
import logging
import os
import uuid
import weakref
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from numpyro.infer import MCMC, SVI

from dopax._warn import warn
from dopax.config import get_config
from dopax.data import ArrayDataset, ArrayLoader
from dopax.exceptions import NotFittedError
from dopax.inference.mcmc import MCMCDriver
from dopax.inference.svi import SVIDriver, SVIRunResult, still_falling
from dopax.inference.trace import ZarrTrace
from dopax.kernel.signature import check_reserved_kwargs, validate_signature
from dopax.kernel.spec import KernelSpec, build_spec, observed_sites, validate_trace
from dopax.model.state import Posterior, TempFolder, require_posterior
from dopax.output import schema
from dopax.output.build import build_tree
from dopax.output.schema import SiteLayout
from dopax.parallel.batching import BlockPlan
from dopax.parallel.sharded import DRAW, OBS
from dopax.sampling.forward import LOG_LIKELIHOOD, PREDICT, PassSpec
from dopax.sampling.plan import FULL, ForwardPlan, make_plan
from dopax.sampling.prepare import BoundArgs, bind_args
from dopax.sampling.probe import probe_sites
from dopax.streaming.executor import Job, run_job

logger = logging.getLogger("dopax")

__all__ = ["ImpactModel"]

_STORES = ("persistent", "memory")


def _typed_key(key: Any, name: str = "rng_key") -> jax.Array:
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise TypeError(f"`{name}` must be a single key; got a batch of shape {key.shape}.")
        return key
    arr = np.asarray(key) if not isinstance(key, jax.Array) else key
    if arr.dtype == np.uint32 and arr.shape == (2,):
        return jax.random.wrap_key_data(jnp.asarray(arr, jnp.uint32))
    raise TypeError(
        f"`{name}` must be a JAX PRNG key such as `jax.random.key(0)`; got {type(key).__name__}."
    )


def _check_key(key: Any, name: str = "rng_key") -> None:
    """Check a key without device work, warning for a legacy uint32 key."""
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise TypeError(f"`{name}` must be a single key; got a batch of shape {key.shape}.")
        return
    if getattr(key, "dtype", None) == np.uint32 and getattr(key, "shape", None) == (2,):
        warn(
            f"`{name}` is a legacy uint32 key; it is converted with `jax.random.wrap_key_data`. "
            "Pass `jax.random.key(seed)` instead.",
            UserWarning,
        )
        return
    raise TypeError(
        f"`{name}` must be a JAX PRNG key such as `jax.random.key(0)`; got {type(key).__name__}."
    )


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
    return int(value)


class ImpactModel:
    """A NumPyro kernel with its inference method, posterior and outputs.

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
        if not isinstance(inference, SVI | MCMC):
            raise TypeError(
                "`inference` must be a `numpyro.infer.SVI` or `numpyro.infer.MCMC` object; "
                f"got {type(inference).__name__}."
            )
        self._kernel = kernel
        self._rng_key_in = rng_key
        self._rng_key: jax.Array | None = None
        _check_key(rng_key)
        self._inference = inference
        self._param_input = param_input
        self._param_output = param_output
        self._spec: KernelSpec | None = None
        self._posterior: Posterior | None = None
        self._svi_state: Any = None
        self._vi_result: Any = None
        self._mcmc: MCMCDriver | None = None
        self._counter = itertools.count()
        self._temp: TempFolder | None = None
        self._plans: dict[Any, ForwardPlan] = {}
        self._block_cache: dict[object, tuple[float, float]] = {}
        ImpactModel._live.add(self)

    # ------------------------------------------------------------------ properties
    @property
    def kernel(self) -> Any:
        """The NumPyro model function."""
        return self._kernel

    @property
    def inference(self) -> SVI | MCMC:
        """The SVI or MCMC object given at construction."""
        return self._inference

    @property
    def param_input(self) -> str:
        """Name of the kernel's input argument."""
        return self._param_input

    @property
    def param_output(self) -> str:
        """Name of the kernel's output argument and site."""
        return self._param_output

    @property
    def rng_key(self) -> jax.Array:
        """The model's PRNG key (calls derive theirs from it; it never changes)."""
        if self._rng_key is None:
            self._rng_key = _typed_key(self._rng_key_in)
        return self._rng_key

    @property
    def kernel_spec(self) -> KernelSpec | None:
        """What the first trace revealed, or ``None`` before it."""
        return self._spec

    @property
    def posterior(self) -> dict[str, np.ndarray] | None:
        """Posterior draws (leading axis: all draws, chain-major), or ``None``."""
        return None if self._posterior is None else dict(self._posterior.draws)

    @property
    def temp_dir(self) -> str | None:
        """The model's temporary output folder, created on first need."""
        return None if self._temp is None or not self._temp.alive else self._temp.path

    @property
    def vi_result(self) -> Any:
        """The SVI result (``params``, ``losses``), or ``None``."""
        return self._vi_result

    @vi_result.setter
    def vi_result(self, value: Any) -> None:
        losses = getattr(value, "losses", None)
        if losses is not None and not np.all(np.isfinite(np.asarray(losses))):
            warn(
                "`vi_result.losses` contains NaN or Inf; the fit may have diverged.", RuntimeWarning
            )
        self._vi_result = value

    def is_fitted(self) -> bool:
        """Return whether the model has posterior draws."""
        return self._posterior is not None

    def __repr__(self) -> str:
        return (
            f"ImpactModel(kernel={getattr(self._kernel, '__name__', 'kernel')}, "
            f"inference={type(self._inference).__name__}, fitted={self.is_fitted()})"
        )

    def __str__(self) -> str:
        lines = [
            "ImpactModel",
            f"  kernel:     {getattr(self._kernel, '__name__', repr(self._kernel))}",
            f"  inference:  {type(self._inference).__name__}",
            f"  input/output: {self._param_input!r} / {self._param_output!r}",
        ]
        if self._posterior is None:
            lines.append("  posterior:  none (call fit, fit_on_batch or set_posterior_sample)")
        else:
            p = self._posterior
            lines.append(
                f"  posterior:  {p.num_draws} draws in {p.num_chains} chain(s) of {sorted(p.draws)}"
            )
        return "\n".join(lines)

    # ------------------------------------------------------------------ helpers
    def _key(self, rng_key: Any) -> jax.Array:
        if rng_key is not None:
            _check_key(rng_key)
            return _typed_key(rng_key)
        return jax.random.fold_in(self.rng_key, next(self._counter))

    def _bind(self, X: Any, y: Any, kwargs: Mapping[str, Any]) -> BoundArgs:
        check_reserved_kwargs(kwargs, self._kernel, self._param_input, self._param_output)
        return bind_args(self._param_input, X, self._param_output, y, kwargs)

    def _ensure_spec(self, bound: BoundArgs, *, fitting: bool) -> KernelSpec:
        if self._spec is not None and (not fitting or self._spec.output_observed):
            return self._spec
        small = {k: jnp.asarray(v[:2]) for k, v in bound.rows.items()}
        traced = probe_sites(self._kernel, {**bound.shared, **small}, bound.static)
        validate_trace(traced, self._kernel, self._param_output, fitting=fitting)
        spec = build_spec(traced, self._param_output)
        if self._spec is None or fitting:
            self._spec = spec
        return spec

    def _temp_folder(self) -> TempFolder:
        if self._temp is None or not self._temp.alive:
            self._temp = TempFolder()
        return self._temp

    # ------------------------------------------------------------------ fitting
    def _svi(self, method: str) -> SVIDriver:
        if not isinstance(self._inference, SVI):
            raise TypeError(
                f"`{method}` runs SVI, but this model's inference is MCMC; use `fit_on_batch` "
                "to run the sampler."
            )
        driver = getattr(self, "_svi_driver", None)
        if driver is None:
            driver = SVIDriver(self._inference)
            self._svi_driver = driver
        return driver

    def _draw_guide(self, num_samples: int, key: jax.Array, bound: BoundArgs) -> None:
        driver = self._svi("fit")
        params = driver.params(self._svi_state)
        spec = self._spec
        exclude = {self._param_output}
        if spec is not None:
            exclude |= set(spec.return_sites)
        args = {k: jnp.asarray(v) for k, v in {**bound.shared, **bound.rows}.items()}
        draws = driver.draw_posterior(key, params, num_samples, bound.static, args, exclude)
        self._posterior = Posterior(draws, 1)

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
    ) -> ImpactModel:
        """Fit the kernel with SVI over mini-batches, then draw posterior samples.

        With ``batch_size=None`` the data are used whole and steps continue
        until the loss settles (at least ``1000 * epochs`` steps, at most
        20,000), so the defaults reach a sensible optimum; with a
        ``batch_size`` exactly ``epochs`` passes of mini-batches run. Either
        way a ``UserWarning`` says so when the loss was still falling at the end.

        Args:
            X: Input array-like with a leading row axis, or an
                :class:`~dopax.data.ArrayLoader` (then ``y`` must be ``None``;
                its field ``param_input`` binds to the input, the others by
                name, and its own batch size and shuffling are used, padded
                rows dropped).
            y: Output array-like, one entry per row.
            num_samples: Posterior draws to take from the guide at the end.
            rng_key: Key for this call; derived from the model's key if omitted.
            progress: Whether to show a progress bar with the loss.
            batch_size: Rows per mini-batch, or ``None`` for full-batch steps.
            epochs: Passes over the data (minimum passes when ``batch_size`` is None).
            shuffle: Whether to shuffle rows every epoch.
            **kwargs: Further kernel arguments (arrays with one entry per row
                are batched with ``X``).

        Returns:
            The model itself.
        """
        from tqdm.auto import tqdm

        driver = self._svi("fit")
        num_samples = _check_positive_int(num_samples, "num_samples")
        epochs = _check_positive_int(epochs, "epochs")
        if batch_size is not None:
            batch_size = _check_positive_int(batch_size, "batch_size")
        user_loader = X if isinstance(X, ArrayLoader) else None
        if user_loader is not None and batch_size is not None:
            raise ValueError(
                "`batch_size` is set by the ArrayLoader passed as `X`; leave `batch_size` None."
            )
        X, y, kwargs = self._unpack_loader(X, y, kwargs)
        bound = self._bind(X, y, kwargs)
        if self._param_output not in bound.rows:
            raise ValueError("`fit` needs the output `y`.")
        self._ensure_spec(bound, fitting=True)
        key = self._key(rng_key)
        k_init, k_shuffle, k_post = jax.random.split(key, 3)
        args = {k: jnp.asarray(v) for k, v in {**bound.shared, **bound.rows}.items()}
        if self._svi_state is None:
            self._svi_state = driver.init(k_init, bound.static, args)
        bar = tqdm(disable=not progress, desc="fit", leave=False)
        try:
            if batch_size is None and user_loader is None:
                bar.total = None

                def show(step: int, loss: float) -> None:
                    bar.n = step
                    bar.set_postfix(loss=f"{loss:.4g}", refresh=True)

                state, losses = driver.run_full_batch(
                    self._svi_state,
                    bound.static,
                    args,
                    num_steps=None,
                    min_steps=1000 * epochs,
                    progress=show,
                )
            else:
                if user_loader is not None:
                    loader = user_loader
                else:
                    dataset = ArrayDataset(**{**bound.rows})
                    loader = ArrayLoader(
                        dataset, k_shuffle, batch_size=batch_size or 1, shuffle=shuffle
                    )
                shared = {k: jnp.asarray(v) for k, v in bound.shared.items()}
                bar.total = epochs

                def batches(epoch: int) -> Iterator[dict[str, Any]]:
                    for batch, n_pad in loader:
                        keep = {k: v for k, v in batch.items() if k in bound.rows}
                        if n_pad:
                            keep = {k: v[: v.shape[0] - n_pad] for k, v in keep.items()}
                        yield {**shared, **{k: jnp.asarray(v) for k, v in keep.items()}}

                def show_epoch(epoch: int, loss: float) -> None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4g}", refresh=True)

                state, losses = driver.run_epochs(
                    self._svi_state, bound.static, batches, epochs=epochs, progress=show_epoch
                )
        finally:
            bar.close()
        self._svi_state = state
        self.vi_result = SVIRunResult(driver.params(state), losses)
        if still_falling(losses):
            warn(
                f"The SVI loss was still falling when `fit` stopped after {len(losses)} steps; "
                "the posterior may be under-fitted. Increase `epochs` (or use `fit_on_batch` "
                "with more `num_steps`).",
                UserWarning,
            )
        self._draw_guide(num_samples, k_post, bound)
        return self

    def _unpack_loader(
        self, X: Any, y: Any, kwargs: Mapping[str, Any]
    ) -> tuple[Any, Any, dict[str, Any]]:
        if not isinstance(X, ArrayLoader):
            return X, y, dict(kwargs)
        if y is not None:
            raise ValueError("When `X` is an ArrayLoader, `y` must be None (the loader holds it).")
        arrays = dict(X.dataset.arrays)
        if self._param_input not in arrays:
            raise ValueError(
                f"The ArrayLoader has no field {self._param_input!r} (`param_input`); "
                f"its fields are {sorted(arrays)}."
            )
        X_arr = arrays.pop(self._param_input)
        y_arr = arrays.pop(self._param_output, None)
        return X_arr, y_arr, {**arrays, **kwargs}

    def fit_on_batch(
        self,
        X: Any,
        y: Any,
        *,
        num_steps: int = 10000,
        num_samples: int = 1000,
        rng_key: Any = None,
        progress: bool = True,
        trace: ZarrTrace | None = None,
        **kwargs: Any,
    ) -> ImpactModel:
        """Fit on one in-memory batch: SVI resumes from its last state; MCMC runs the sampler.

        Args:
            X: Input array-like with a leading row axis.
            y: Output array-like, one entry per row.
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
        from tqdm.auto import tqdm

        if trace is not None and not isinstance(self._inference, MCMC):
            raise TypeError("`trace=` streams an MCMC run; this model's inference is SVI.")
        num_steps = _check_positive_int(num_steps, "num_steps")
        num_samples = _check_positive_int(num_samples, "num_samples")
        X, y, kwargs = self._unpack_loader(X, y, kwargs)
        bound = self._bind(X, y, kwargs)
        if self._param_output not in bound.rows:
            raise ValueError("`fit_on_batch` needs the output `y`.")
        self._ensure_spec(bound, fitting=True)
        key = self._key(rng_key)
        args = {k: jnp.asarray(v) for k, v in {**bound.shared, **bound.rows}.items()}
        if isinstance(self._inference, MCMC):
            driver = self._mcmc or MCMCDriver(self._inference)
            if trace is None:
                driver.run(key, bound.static, args, progress=progress)
            else:
                driver.run_to_trace(trace, key, bound.static, args, progress=progress)
            self._mcmc = driver
            exclude = {self._param_output, *(self._spec.return_sites if self._spec else ())}
            self._posterior = Posterior(driver.draws(exclude), driver.num_chains)
            return self
        svi = self._svi("fit_on_batch")
        k_init, k_post = jax.random.split(key)
        if self._svi_state is None:
            self._svi_state = svi.init(k_init, bound.static, args)
        with tqdm(total=num_steps, disable=not progress, desc="fit_on_batch", leave=False) as bar:

            def show(step: int, loss: float) -> None:
                bar.n = step
                bar.set_postfix(loss=f"{loss:.4g}", refresh=True)

            state, losses = svi.run_full_batch(
                self._svi_state, bound.static, args, num_steps=num_steps, progress=show
            )
        self._svi_state = state
        self.vi_result = SVIRunResult(svi.params(state), losses)
        self._draw_guide(num_samples, k_post, bound)
        return self

    def train_on_batch(self, X: Any, y: Any, rng_key: Any = None, **kwargs: Any) -> tuple[Any, Any]:
        """Run one compiled SVI update step on a batch.

        Compiled once per batch shape and set of static arguments.

        Args:
            X: Input batch.
            y: Output batch.
            rng_key: Key used to initialise SVI on the first call.
            **kwargs: Further kernel arguments.

        Returns:
            ``(svi_state, loss)``.
        """
        driver = self._svi("train_on_batch")
        bound = self._bind(X, y, kwargs)
        if self._spec is None:
            self._ensure_spec(bound, fitting=True)
        args = {k: jnp.asarray(v) for k, v in {**bound.shared, **bound.rows}.items()}
        if self._svi_state is None:
            self._svi_state = driver.init(self._key(rng_key), bound.static, args)
        self._svi_state, loss = driver.step(self._svi_state, bound.static, args)
        return self._svi_state, loss

    # ------------------------------------------------------------------ posterior
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

        The model's own posterior is not replaced; use
        :meth:`set_posterior_sample` for that.

        Args:
            num_samples: Draws (per chain for MCMC).
            rng_key: Key for this call; derived from the model's key if omitted.
            return_sites: Sites to keep (default: all latent sites).
            return_datatree: Return a DataTree (``posterior`` group) or a dict.
            **kwargs: Kernel arguments for guides that need data.

        Returns:
            The draws.
        """
        num_samples = _check_positive_int(num_samples, "num_samples")
        key = self._key(rng_key)
        # Latent sites only, like `posterior`: the output and deterministic sites are
        # predictions (they may hold the training rows), not posterior draws.
        exclude = {self._param_output, *(self._spec.return_sites if self._spec else ())}
        if isinstance(self._inference, MCMC):
            if self._mcmc is None or self._mcmc.mcmc is None:
                raise NotFittedError(
                    "`sample` continues the MCMC chains: call `fit_on_batch` first."
                )
            self._mcmc.continue_chains(key, num_samples, progress=False)
            draws = self._mcmc.draws(exclude)
            stats = self._mcmc.sample_stats()
            chains = self._mcmc.num_chains
        else:
            driver = self._svi("sample")
            if self._svi_state is None:
                raise NotFittedError(
                    "`sample` draws from the fitted guide: call `fit` or `fit_on_batch` first."
                )
            static = tuple(sorted((k, v) for k, v in kwargs.items() if not hasattr(v, "shape")))
            args = {k: jnp.asarray(v) for k, v in kwargs.items() if hasattr(v, "shape")}
            draws = driver.draw_posterior(
                key, driver.params(self._svi_state), num_samples, static, args, exclude
            )
            chains = 1
        if return_sites is not None:
            names = [return_sites] if isinstance(return_sites, str) else list(return_sites)
            unknown = sorted(set(names) - set(draws))
            if unknown:
                raise KeyError(f"Unknown return site(s) {unknown}; available: {sorted(draws)}.")
            draws = {k: draws[k] for k in names}
        if not return_datatree:
            return draws
        if isinstance(self._inference, MCMC):
            return build_tree({schema.POSTERIOR: draws, "sample_stats": stats}, chains)
        return build_tree({schema.POSTERIOR: draws}, chains)

    def set_posterior_sample(self, posterior_sample: Mapping[str, Any]) -> ImpactModel:
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
        if self._param_output in draws:
            warn(
                f"`posterior_sample` holds the output site {self._param_output!r}; it is dropped "
                "(outputs are predicted, not substituted).",
                UserWarning,
            )
            draws.pop(self._param_output)
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
        self._posterior = Posterior(draws, 1)
        return self

    # ------------------------------------------------------------------ forward passes
    def _plan(
        self,
        spec: PassSpec,
        bound: BoundArgs,
        latent: Mapping[str, Any],
        intervention: Any,
        force_full: str | None,
    ) -> ForwardPlan:
        signature = (
            spec,
            bound.n_rows,
            tuple((k, v.shape[1:], str(v.dtype)) for k, v in sorted(bound.rows.items())),
            tuple((k, v.shape, str(v.dtype)) for k, v in sorted(bound.shared.items())),
            tuple((k, np.shape(v)[1:]) for k, v in sorted(latent.items())),
            None
            if intervention is None
            else tuple((k, np.shape(v)) for k, v in sorted(dict(intervention).items())),
            force_full,
        )
        plan = self._plans.get(signature)
        if plan is None:
            plan = make_plan(
                spec,
                n_rows=bound.n_rows,
                row_args=bound.rows,
                shared_args=bound.shared,
                latent=latent,
                intervention=intervention,
                force_full=force_full,
            )
            if len(self._plans) > 256:
                self._plans.clear()
            self._plans[signature] = plan
        return plan

    def _return_sites(self, return_sites: Any) -> tuple[str, ...]:
        if return_sites is None:
            assert self._spec is not None
            return self._spec.return_sites
        names = (return_sites,) if isinstance(return_sites, str) else tuple(return_sites)
        if not names or not all(isinstance(n, str) for n in names):
            raise TypeError("`return_sites` must be a site name or a sequence of site names.")
        return names

    def _prepare(
        self,
        *,
        kind: str,
        X: Any,
        y: Any,
        kwargs: Mapping[str, Any],
        intervention: Any,
        return_sites: Any,
        rng_key: Any,
        latent: Posterior | None,
        in_sample: bool,
        shard_axis: str,
        num_samples: int | None = None,
    ) -> tuple[Job, int]:
        if shard_axis not in (OBS, DRAW):
            raise ValueError(f"`shard_axis` must be 'obs' or 'draw'; got {shard_axis!r}.")
        X, y, kwargs = self._unpack_loader(X, y, kwargs)
        bound = self._bind(X, y, kwargs)
        self._ensure_spec(bound, fitting=False)
        if kind == LOG_LIKELIHOOD:
            if self._param_output not in bound.rows:
                raise ValueError("`log_likelihood` needs the observed output `y`.")
            sites = self._observed_sites(bound)
        else:
            sites = self._return_sites(return_sites)
        draws: dict[str, Any] = dict(latent.draws) if latent is not None else {}
        # Only latent sample sites are substituted: deterministic sites are recomputed
        # (as numpyro's Predictive does by default) and unknown names are ignored.
        assert self._spec is not None
        latent_names = set(self._spec.sample_sites)
        draws = {k: v for k, v in draws.items() if k in latent_names}
        chains = latent.num_chains if latent is not None else 1
        force_full = None
        base = PassSpec(self._kernel, bound.static, sites, kind)
        plan = self._plan(base, bound, draws, intervention, None)
        if plan.local_latents:
            n_post = {k: np.shape(draws[k]) for k in plan.local_latents}
            if in_sample:
                for name in plan.local_latents:
                    post_shape = np.shape(draws[name])[1:]
                    if len(post_shape) == 0 or bound.n_rows not in post_shape:
                        raise ValueError(
                            f"Per-row latent site {name!r} has posterior shape {n_post[name]}, "
                            f"which does not fit {bound.n_rows} rows. In-sample calls need the "
                            "training rows; pass `in_sample=False` to draw fresh per-row "
                            "latents for new rows."
                        )
                warn(
                    f"{plan.reason}: all rows are processed together and only draws are split "
                    "across batches and devices.",
                    UserWarning,
                )
            else:
                draws = {k: v for k, v in draws.items() if k not in plan.local_latents}
                plan = self._plan(base, bound, draws, intervention, force_full)
        elif plan.path == FULL:
            warn(
                f"{plan.reason}: rows are processed together and only draws are split across "
                "batches and devices.",
                UserWarning,
            )
        spec = PassSpec(self._kernel, bound.static, sites, kind, plan.global_latents)
        if num_samples is not None:
            n_draws = num_samples
        else:
            n_draws = next(iter(draws.values())).shape[0] if draws else 1
        intervention_arrays = {
            k: jnp.asarray(v) if isinstance(v, jax.Array) else np.asarray(v)
            for k, v in (intervention or {}).items()
        }
        job = Job(
            spec=spec,
            plan=plan,
            call_key=self._key(rng_key),
            latent=draws,
            n_draws=n_draws,
            n_rows=bound.n_rows,
            rows=bound.rows,
            shared=bound.shared,
            intervention={
                k: v.astype(np.float32) if v.dtype == np.float64 else v
                for k, v in intervention_arrays.items()
            },
            shard_axis=shard_axis,
        )
        return job, chains

    def _observed_sites(self, bound: BoundArgs) -> tuple[str, ...]:
        small = {k: jnp.asarray(v[:2]) for k, v in bound.rows.items()}
        return observed_sites(probe_sites(self._kernel, {**bound.shared, **small}, bound.static))

    def _run_in_memory(self, job: Job) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {
            info.name: np.empty((job.n_draws, *info.shape), dtype=info.dtype)
            for info in job.plan.outputs
        }
        blocks = BlockPlan(job.n_draws, job.n_rows if job.n_rows else 1, job.n_draws, job.n_rows)

        def emit(name: str, index: tuple[slice, ...], value: Any) -> None:
            arr = np.asarray(value)
            target = out[name]
            if target.dtype != arr.dtype:
                out[name] = target = target.astype(arr.dtype)
            target[index] = arr

        run_job(job, blocks, emit)
        return out

    def _result(
        self,
        groups: Mapping[str, Mapping[str, Any]],
        chains: Mapping[str, int],
        return_datatree: bool,
        main: str,
    ) -> xr.DataTree | dict[str, np.ndarray]:
        if not return_datatree:
            return dict(groups[main])
        return build_tree(groups, dict(chains))

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
            X: Input array-like with a leading row axis, or an ArrayLoader.
            num_samples: Number of draws.
            rng_key: Key for this call; derived from the model's key if omitted.
            return_sites: Sites to return (default: output and deterministic sites).
            return_datatree: Return a DataTree (``prior_predictive``) or a dict.
            **kwargs: Further kernel arguments.

        Returns:
            The draws.
        """
        num_samples = _check_positive_int(num_samples, "num_samples")
        job, _ = self._prepare(
            kind=PREDICT,
            X=X,
            y=None,
            kwargs=kwargs,
            intervention=None,
            return_sites=return_sites,
            rng_key=rng_key,
            latent=None,
            in_sample=False,
            shard_axis=OBS,
            num_samples=num_samples,
        )
        out = self._run_in_memory(job)
        return self._result(
            {schema.PRIOR_PREDICTIVE: out},
            {schema.PRIOR_PREDICTIVE: 1},
            return_datatree,
            schema.PRIOR_PREDICTIVE,
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
            X: Input array-like with a leading row axis, or an ArrayLoader.
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
        posterior = require_posterior(self._posterior, "predict_on_batch")
        job, chains = self._prepare(
            kind=PREDICT,
            X=X,
            y=None,
            kwargs=kwargs,
            intervention=intervention,
            return_sites=return_sites,
            rng_key=rng_key,
            latent=posterior,
            in_sample=in_sample,
            shard_axis=OBS,
        )
        out = self._run_in_memory(job)
        group = schema.POSTERIOR_PREDICTIVE if in_sample else schema.PREDICTIONS
        return self._result(
            {group: out, schema.POSTERIOR: posterior.draws},
            {group: chains, schema.POSTERIOR: chains},
            return_datatree,
            group,
        )

    def sample_posterior_predictive_on_batch(
        self,
        X: Any,
        *,
        intervention: Mapping[str, Any] | None = None,
        rng_key: Any = None,
        return_sites: Any = None,
        return_datatree: bool = True,
        **kwargs: Any,
    ) -> xr.DataTree | dict[str, np.ndarray]:
        """In-sample :meth:`predict_on_batch` (same arguments, ``in_sample=True``).

        Args:
            X: Input array-like with a leading row axis, or an ArrayLoader.
            intervention: See :meth:`predict_on_batch`.
            rng_key: Key for this call; derived from the model's key if omitted.
            return_sites: Sites to return.
            return_datatree: Return a DataTree or a dict.
            **kwargs: Further kernel arguments.

        Returns:
            The draws.
        """
        return self.predict_on_batch(
            X,
            intervention=intervention,
            rng_key=rng_key,
            in_sample=True,
            return_sites=return_sites,
            return_datatree=return_datatree,
            **kwargs,
        )

    # ------------------------------------------------------------------ streamed calls
    def _stream(
        self,
        job: Job,
        *,
        group: str,
        chains: int,
        static_groups: Mapping[str, tuple[Mapping[str, Any], int]],
        batch_size: int | None,
        store: str,
        output_dir: Any,
        progress: bool,
        desc: str,
        call_attrs: Mapping[str, Any],
    ) -> xr.DataTree:
        from dopax.streaming.run import stream_job
        from dopax.streaming.sinks import MemorySink, ZarrSink
        from dopax.streaming.sizing import size_blocks

        if store not in _STORES:
            raise ValueError(f"`store` must be 'persistent' or 'memory'; got {store!r}.")
        if batch_size is not None:
            batch_size = _check_positive_int(batch_size, "batch_size")
        cfg = get_config()
        draws_per_chain = job.n_draws // chains
        blocks = size_blocks(
            job, chains=chains, batch_size=batch_size, config=cfg, cache=self._block_cache
        )
        logger.debug(
            "%s: blocks of %d draws x %d rows, %d draw-row cells per step",
            desc,
            blocks.draw_block,
            blocks.row_block,
            blocks.step_cells,
        )
        layouts = []
        for info in job.plan.outputs:
            chunks = [1, blocks.draw_block, *info.shape]
            if info.row_axis is not None:
                chunks[2 + info.row_axis] = min(blocks.row_block, info.shape[info.row_axis]) or 1
            layouts.append(
                SiteLayout(
                    group=group,
                    name=info.name,
                    num_chains=chains,
                    num_draws=draws_per_chain,
                    shape=tuple(info.shape),
                    dtype=info.dtype,
                    chunks=tuple(max(c, 1) for c in chunks),
                )
            )
        static = (
            {
                g: {k: np.asarray(v).reshape(c, -1, *np.shape(v)[1:]) for k, v in arrays.items()}
                for g, (arrays, c) in static_groups.items()
            }
            if static_groups
            else None
        )
        keep: Any = None
        if store == "memory":
            sink: Any = MemorySink()
        else:
            if output_dir is None:
                keep = self._temp_folder()
                base = keep.path
            else:
                base = os.fspath(output_dir)
                os.makedirs(base, exist_ok=True)
            stamp = np.datetime64("now").astype(str).replace(":", "").replace("-", "")
            path = os.path.join(base, f"{desc}-{stamp}-{uuid.uuid4().hex[:8]}.zarr")
            sink = ZarrSink(path, keepalive=keep)
        attrs = {
            **schema.base_attrs(),
            **call_attrs,
            "shard_axis": job.shard_axis,
            "batch_size": int(blocks.row_block),
            "path": job.plan.path,
        }
        return stream_job(
            job,
            blocks,
            sink,
            group=group,
            layouts=layouts,
            static=static,
            attrs=attrs,
            progress=progress,
            desc=desc,
        )

    def _static_posterior(self, posterior: Posterior) -> dict[str, tuple[dict[str, Any], int]]:
        return {schema.POSTERIOR: (posterior.draws, posterior.num_chains)}

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
        **kwargs: Any,
    ) -> xr.DataTree:
        """Stream prior predictive draws in chunks (Zarr on disk by default).

        Args:
            X: Input array-like with a leading row axis, or an ArrayLoader.
            num_samples: Number of draws.
            rng_key: Key for this call; derived from the model's key if omitted.
            return_sites: Sites to return (default: output and deterministic sites).
            batch_size: Rows per chunk (automatic from the memory budget if None).
            shard_axis: ``"obs"`` splits rows across devices, ``"draw"`` draws.
            store: ``"persistent"`` (chunked Zarr on disk) or ``"memory"``.
            output_dir: Base folder for a new per-call sub-folder (default: the
                model's temporary folder).
            progress: Whether to show a progress bar.
            **kwargs: Further kernel arguments.

        Returns:
            A DataTree with the ``prior_predictive`` group.
        """
        num_samples = _check_positive_int(num_samples, "num_samples")
        job, _ = self._prepare(
            kind=PREDICT,
            X=X,
            y=None,
            kwargs=kwargs,
            intervention=None,
            return_sites=return_sites,
            rng_key=rng_key,
            latent=None,
            in_sample=False,
            shard_axis=shard_axis,
            num_samples=num_samples,
        )
        return self._stream(
            job,
            group=schema.PRIOR_PREDICTIVE,
            chains=1,
            static_groups={},
            batch_size=batch_size,
            store=store,
            output_dir=output_dir,
            progress=progress,
            desc="prior_predictive",
            call_attrs={"method": "sample_prior_predictive"},
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
        **kwargs: Any,
    ) -> xr.DataTree:
        """Stream posterior predictive draws in chunks (Zarr on disk by default).

        Draws equal those of :meth:`predict_on_batch` with the same key,
        whatever ``batch_size``, ``shard_axis``, ``store`` or device count.

        Args:
            X: Input array-like with a leading row axis, or an ArrayLoader.
            intervention: See :meth:`predict_on_batch`.
            rng_key: Key for this call; derived from the model's key if omitted.
            in_sample: Group ``posterior_predictive`` (True) or ``predictions``.
            return_sites: Sites to return (default: output and deterministic sites).
            batch_size: Rows per chunk (automatic from the memory budget if None).
            shard_axis: ``"obs"`` splits rows across devices, ``"draw"`` draws.
            store: ``"persistent"`` (chunked Zarr on disk) or ``"memory"``.
            output_dir: Base folder for a new per-call sub-folder (default: the
                model's temporary folder).
            progress: Whether to show a progress bar.
            **kwargs: Further kernel arguments.

        Returns:
            A DataTree with the predictive group and ``posterior``.
        """
        posterior = require_posterior(self._posterior, "predict")
        job, chains = self._prepare(
            kind=PREDICT,
            X=X,
            y=None,
            kwargs=kwargs,
            intervention=intervention,
            return_sites=return_sites,
            rng_key=rng_key,
            latent=posterior,
            in_sample=in_sample,
            shard_axis=shard_axis,
        )
        group = schema.POSTERIOR_PREDICTIVE if in_sample else schema.PREDICTIONS
        return self._stream(
            job,
            group=group,
            chains=chains,
            static_groups=self._static_posterior(posterior),
            batch_size=batch_size,
            store=store,
            output_dir=output_dir,
            progress=progress,
            desc="predict",
            call_attrs={
                "method": "predict",
                "in_sample": int(in_sample),
                "intervention": repr(sorted((intervention or {}).keys())),
            },
        )

    def sample_posterior_predictive(
        self,
        X: Any,
        *,
        intervention: Mapping[str, Any] | None = None,
        rng_key: Any = None,
        return_sites: Any = None,
        batch_size: int | None = None,
        shard_axis: str = "obs",
        store: str = "persistent",
        output_dir: Any = None,
        progress: bool = True,
        **kwargs: Any,
    ) -> xr.DataTree:
        """In-sample :meth:`predict` (same arguments, ``in_sample=True``).

        Args:
            X: Input array-like with a leading row axis, or an ArrayLoader.
            intervention: See :meth:`predict_on_batch`.
            rng_key: Key for this call; derived from the model's key if omitted.
            return_sites: Sites to return.
            batch_size: Rows per chunk.
            shard_axis: ``"obs"`` or ``"draw"``.
            store: ``"persistent"`` or ``"memory"``.
            output_dir: Base folder for the per-call sub-folder.
            progress: Whether to show a progress bar.
            **kwargs: Further kernel arguments.

        Returns:
            A DataTree with ``posterior_predictive`` and ``posterior``.
        """
        return self.predict(
            X,
            intervention=intervention,
            rng_key=rng_key,
            in_sample=True,
            return_sites=return_sites,
            batch_size=batch_size,
            shard_axis=shard_axis,
            store=store,
            output_dir=output_dir,
            progress=progress,
            **kwargs,
        )

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
        **kwargs: Any,
    ) -> xr.DataTree:
        """Stream the pointwise log-likelihood of every observed site.

        Args:
            X: Input array-like with a leading row axis, or an ArrayLoader.
            y: Observed output, one entry per row.
            batch_size: Rows per chunk.
            shard_axis: ``"obs"`` or ``"draw"``.
            store: ``"persistent"`` or ``"memory"``.
            output_dir: Base folder for the per-call sub-folder.
            progress: Whether to show a progress bar.
            **kwargs: Further kernel arguments.

        Returns:
            A DataTree with ``log_likelihood`` and ``posterior``.
        """
        posterior = require_posterior(self._posterior, "log_likelihood")
        job, chains = self._prepare(
            kind=LOG_LIKELIHOOD,
            X=X,
            y=y,
            kwargs=kwargs,
            intervention=None,
            return_sites=None,
            rng_key=None,
            latent=posterior,
            in_sample=True,
            shard_axis=shard_axis,
        )
        return self._stream(
            job,
            group=schema.LOG_LIKELIHOOD,
            chains=chains,
            static_groups=self._static_posterior(posterior),
            batch_size=batch_size,
            store=store,
            output_dir=output_dir,
            progress=progress,
            desc="log_likelihood",
            call_attrs={"method": "log_likelihood"},
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
        :meth:`predict_on_batch`) or a dict of :meth:`predict` arguments. When
        both sides are computed here they share one key, so they share their
        random numbers and observation noise cancels in the contrast.

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
        from dopax.effects.contrast import contrast_trees

        if (output_baseline is None) == (args_baseline is None):
            raise ValueError("Pass exactly one of `output_baseline` and `args_baseline`.")
        if (output_intervention is None) == (args_intervention is None):
            raise ValueError("Pass exactly one of `output_intervention` and `args_intervention`.")
        shared_key = None
        if args_baseline is not None or args_intervention is not None:
            given = [a.get("rng_key") for a in (args_baseline, args_intervention) if a is not None]
            shared_key = next((k for k in given if k is not None), None)
            if shared_key is None:
                shared_key = self._key(None)
        method = self.predict_on_batch if on_batch else self.predict

        def side(tree: Any, args: Mapping[str, Any] | None, label: str) -> xr.DataTree:
            if tree is not None:
                if not isinstance(tree, xr.DataTree):
                    raise TypeError(
                        f"`{label}` must be a DataTree result; got {type(tree).__name__}."
                    )
                return tree
            assert args is not None
            call = {**dict(args)}
            call.setdefault("rng_key", shared_key)
            if "X" not in call and self._param_input not in call:
                raise ValueError(f"`args_{label.split('_')[1]}` must include `X`.")
            X = call.pop("X", None)
            if X is None:
                X = call.pop(self._param_input)
            if not on_batch:
                call.setdefault("progress", False)
            result = method(X, **call)
            assert isinstance(result, xr.DataTree)
            return result

        base = side(output_baseline, args_baseline, "output_baseline")
        inter = side(output_intervention, args_intervention, "output_intervention")
        return contrast_trees(base, inter)

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
        **kwargs: Any,
    ) -> Any:
        """Compare scenarios in one streamed pass with shared random numbers.

        Every scenario is evaluated on each chunk of rows with the same random
        numbers, and only reductions are kept: per draw, each scenario's mean
        outcome and each contrast against ``baseline`` (absolute and
        relative), per group of ``by``, and per row the posterior mean and a
        central interval of each contrast. No (draws x rows) array is stored.

        Args:
            X: Base input with a leading row axis.
            scenarios: Scenario name to a dict of kernel inputs to override
                (e.g. ``{"t": ones}`` or ``{"X": X_new}``) and/or
                ``"intervention"``: a dict of site values (scalars or one
                value per row).
            baseline: Name of the scenario every other one is contrasted with.
            site: Outcome site (default: the output site).
            by: One group label per row for conditional effects, or ``None``.
            interval: Central interval probability of per-row contrasts.
            keep_draws: Also stream every scenario's draws of ``site`` (a
                ``scenario_draws`` child of the result, with a ``scenario``
                dimension).
            rng_key: Key for this call; derived from the model's key if omitted.
            batch_size: Rows per chunk (automatic from the memory budget if None).
            store: Where kept draws go: ``"persistent"`` (Zarr) or ``"memory"``.
            output_dir: Base folder for the kept draws' new sub-folder (default:
                the model's temporary folder).
            progress: Whether to show a progress bar.
            **kwargs: Base kernel arguments shared by the scenarios.

        Returns:
            An :class:`~dopax.effects.EffectResult` with ``summary()`` and ``plot()``.
        """
        from dopax.effects.engine import run_comparison

        posterior = require_posterior(self._posterior, "compare_scenarios")
        if batch_size is not None:
            batch_size = _check_positive_int(batch_size, "batch_size")
        check_reserved_kwargs(kwargs, self._kernel, self._param_input, self._param_output)
        return run_comparison(
            self,
            posterior,
            X,
            scenarios,
            baseline=baseline,
            site=site,
            by=by,
            interval=interval,
            rng_key=rng_key,
            batch_size=batch_size,
            progress=progress,
            kwargs=kwargs,
            keep_draws=keep_draws,
            store=store,
            output_dir=output_dir,
        )

    # ------------------------------------------------------------------ lifecycle
    def cleanup(self) -> None:
        """Remove the model's temporary folder (results read from it then raise)."""
        if self._temp is not None:
            self._temp.remove()
            self._temp = None

    @classmethod
    def cleanup_models(cls) -> None:
        """Call :meth:`cleanup` on every live model."""
        for model in list(cls._live):
            model.cleanup()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_temp"] = None
        state["_plans"] = {}
        state["_block_cache"] = {}
        state.pop("_svi_driver", None)
        state["_counter_value"] = next(self._counter)
        self._counter = itertools.count(state["_counter_value"])
        state.pop("_counter")
        if state.get("_rng_key") is not None:
            state["_rng_key"] = jax.random.key_data(state["_rng_key"])
            state["_rng_key_impl"] = str(jax.random.key_impl(self.rng_key))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        value = state.pop("_counter_value")
        impl = state.pop("_rng_key_impl", None)
        self.__dict__.update(state)
        self._counter = itertools.count(value)
        if self._rng_key is not None:
            self._rng_key = jax.random.wrap_key_data(jnp.asarray(self._rng_key), impl=impl)
        self._rng_key_in = self._rng_key
        ImpactModel._live.add(self)
