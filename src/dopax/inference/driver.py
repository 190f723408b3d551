"""The fit drivers behind a model: the one place that tells SVI and MCMC apart.

:func:`make_driver` wraps the user's inference object in a driver with one
interface (fit on a batch, draw more posterior samples, keep the fit state);
the facade never branches on the inference type.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from numpyro.infer import MCMC, SVI

from dopax.config import get_config
from dopax.exceptions import FitDivergedError, NotFittedError
from dopax.inference.mcmc import MCMCDriver
from dopax.inference.posterior import Posterior
from dopax.inference.svi import SVIDriver, SVIRunResult, check_losses
from dopax.inference.svi_fit import fit_epochs, fit_steps
from dopax.sampling.prepare import BoundArgs

__all__ = ["Driver", "MCMCFit", "SVIFit", "check_model", "make_driver"]


def make_driver(inference: Any) -> Driver:
    """Return the driver of ``inference`` (an SVI or MCMC object).

    Args:
        inference: The user's ``numpyro.infer.SVI`` or ``numpyro.infer.MCMC``.

    Raises:
        TypeError: For any other object.
    """
    if isinstance(inference, SVI):
        return SVIFit(inference)
    if isinstance(inference, MCMC):
        return MCMCFit(inference)
    raise TypeError(
        "`inference` must be a `numpyro.infer.SVI` or `numpyro.infer.MCMC` object; "
        f"got {type(inference).__name__}."
    )


def _wrapped(fn: Any) -> list[Any]:
    """Return ``fn`` and what it wraps (NumPyro handlers, ``functools.wraps``)."""
    chain: list[Any] = []
    while fn is not None and all(fn is not seen for seen in chain):
        chain.append(fn)
        fn = getattr(fn, "fn", None) or getattr(fn, "__wrapped__", None)
    return chain


def _same_model(model: Any, kernel: Any) -> bool:
    for candidate in _wrapped(model):
        if candidate is kernel:
            return True
        if (
            isinstance(candidate, functools.partial)
            and isinstance(kernel, functools.partial)
            and candidate.func is kernel.func
            and sorted(candidate.keywords) == sorted(kernel.keywords)
        ):
            return True
    return False


def _name(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn))


def check_model(inference: Any, kernel: Any) -> None:
    """Check that ``inference`` was built for ``kernel``.

    Args:
        inference: The user's SVI or MCMC object.
        kernel: The model's kernel.

    Raises:
        ValueError: If the inference object runs another model.
    """
    if isinstance(inference, SVI):
        model, how = inference.model, "SVI(kernel, guide, optim, loss)"
    else:
        model = getattr(getattr(inference, "sampler", None), "model", None)
        how = "MCMC(NUTS(kernel), ...)"
        if model is None:  # a sampler built from a potential function
            return
    if not _same_model(model, kernel):

        def name(fn: Any) -> str:
            return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", repr(fn)))

        raise ValueError(
            f"`inference` was built for the model {_name(model)!r}, not for `kernel` "
            f"{_name(kernel)!r}: the fit would run the other model. Build it for the same "
            f"kernel, e.g. `{how}`."
        )


def _arrays(bound: BoundArgs) -> dict[str, Any]:
    return {k: jnp.asarray(v) for k, v in {**bound.shared, **bound.rows}.items()}


class Driver:
    """The interface of a fit driver (see :class:`SVIFit` and :class:`MCMCFit`)."""

    #: The inference method's name.
    kind = ""
    #: The last SVI result (``params``, ``losses``), or ``None``.
    vi_result: SVIRunResult | None = None

    def svi(self, method: str) -> SVIFit:
        """Return this driver as an SVI driver, or raise saying what ``method`` needs."""
        raise TypeError(
            f"`{method}` runs SVI, but this model's inference is MCMC; use `fit_on_batch` "
            "to run the sampler."
        )

    def fit_on_batch(
        self,
        key: jax.Array,
        bound: BoundArgs,
        *,
        num_steps: int,
        num_samples: int,
        progress: bool,
        exclude: Iterable[str],
    ) -> Posterior:
        """Fit on one in-memory batch and return the posterior."""
        raise NotImplementedError

    def sample(
        self, key: jax.Array, num_samples: int, kwargs: Mapping[str, Any], exclude: Iterable[str]
    ) -> Posterior:
        """Draw more posterior samples without replacing the model's posterior."""
        raise NotImplementedError


class SVIFit(Driver):
    """Runs an :class:`numpyro.infer.SVI` object and keeps its state.

    Args:
        svi: The user's SVI object (never modified).
    """

    kind = "svi"

    def __init__(self, svi: SVI) -> None:
        self.driver = SVIDriver(svi, get_config().svi_steps_per_chunk)
        self.state: Any = None
        self.vi_result = None

    def svi(self, method: str) -> SVIFit:  # noqa: D102
        return self

    def _init(self, key: jax.Array, bound: BoundArgs) -> None:
        if self.state is None:
            self.state = self.driver.init(key, bound.static, _arrays(bound))

    def _finish(self, state: Any, losses: Any) -> None:
        params = self.driver.params(state)
        result = SVIRunResult(params, losses)
        try:
            check_losses(losses, params)
        except FitDivergedError:
            self.vi_result = result  # for inspection; the fit state is not replaced
            raise
        self.state = state
        self.vi_result = result

    def draw(
        self, key: jax.Array, num_samples: int, bound: BoundArgs, exclude: Iterable[str]
    ) -> Posterior:
        """Draw posterior samples from the fitted guide."""
        params = self.driver.params(self.state)
        draws = self.driver.draw_posterior(
            key, params, num_samples, bound.static, _arrays(bound), exclude
        )
        return Posterior(draws, 1)

    def fit(
        self,
        key: jax.Array,
        bound: BoundArgs,
        *,
        batch_size: int | None,
        epochs: int,
        shuffle: bool,
        loader: Any,
        num_samples: int,
        progress: bool,
        exclude: Iterable[str],
    ) -> Posterior:
        """Fit over mini-batches or full batches until the loss settles; see ``ImpactModel.fit``."""
        k_init, k_shuffle, k_post = jax.random.split(key, 3)
        self._init(k_init, bound)
        if batch_size is None and loader is None:
            state, losses = fit_steps(
                self.driver, self.state, bound, _arrays(bound), None, 1000 * epochs, progress
            )
        else:
            state, losses = fit_epochs(
                self.driver, self.state, bound, k_shuffle, batch_size, epochs, shuffle, loader,
                progress,
            )  # fmt: skip
        self._finish(state, losses)
        return self.draw(k_post, num_samples, bound, exclude)

    def fit_on_batch(  # noqa: D102
        self,
        key: jax.Array,
        bound: BoundArgs,
        *,
        num_steps: int,
        num_samples: int,
        progress: bool,
        exclude: Iterable[str],
    ) -> Posterior:
        k_init, k_post = jax.random.split(key)
        self._init(k_init, bound)
        state, losses = fit_steps(
            self.driver, self.state, bound, _arrays(bound), num_steps, 0, progress
        )
        self._finish(state, losses)
        return self.draw(k_post, num_samples, bound, exclude)

    def step(self, key: jax.Array, bound: BoundArgs) -> tuple[Any, Any]:
        """Run one compiled update step (initialising first with ``key``)."""
        self._init(key, bound)
        self.state, loss = self.driver.step(self.state, bound.static, _arrays(bound))
        return self.state, loss

    def sample(  # noqa: D102
        self, key: jax.Array, num_samples: int, kwargs: Mapping[str, Any], exclude: Iterable[str]
    ) -> Posterior:
        if self.state is None:
            raise NotFittedError(
                "`sample` draws from the fitted guide: call `fit` or `fit_on_batch` first."
            )
        static = tuple(sorted((k, v) for k, v in kwargs.items() if not hasattr(v, "shape")))
        args = {k: jnp.asarray(v) for k, v in kwargs.items() if hasattr(v, "shape")}
        params = self.driver.params(self.state)
        draws = self.driver.draw_posterior(key, params, num_samples, static, args, exclude)
        return Posterior(draws, 1)

    def __getstate__(self) -> dict[str, Any]:
        return {"svi": self.driver.svi, "state": self.state, "vi_result": self.vi_result}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["svi"])  # type: ignore[misc]
        self.state = state["state"]
        self.vi_result = state["vi_result"]


class MCMCFit(Driver):
    """Runs a private copy of an :class:`numpyro.infer.MCMC` object and keeps its chains.

    Args:
        mcmc: The user's MCMC object (never run or modified).
    """

    kind = "mcmc"

    def __init__(self, mcmc: MCMC) -> None:
        self.driver = MCMCDriver(mcmc)

    def fit_on_batch(  # noqa: D102
        self,
        key: jax.Array,
        bound: BoundArgs,
        *,
        num_steps: int,
        num_samples: int,
        progress: bool,
        exclude: Iterable[str],
    ) -> Posterior:
        self.driver.run(key, bound.static, _arrays(bound), progress=progress)
        return Posterior(self.driver.draws(exclude), self.driver.num_chains)

    def sample(  # noqa: D102
        self, key: jax.Array, num_samples: int, kwargs: Mapping[str, Any], exclude: Iterable[str]
    ) -> Posterior:
        if self.driver.mcmc is None:
            raise NotFittedError("`sample` continues the MCMC chains: call `fit_on_batch` first.")
        self.driver.continue_chains(key, num_samples, progress=False)
        return Posterior(self.driver.draws(exclude), self.driver.num_chains)
