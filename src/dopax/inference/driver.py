"""The fit drivers behind a model: the one place that tells SVI and MCMC apart.

:func:`make_driver` wraps the inference object in a driver with one interface.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import MCMC, SVI
from numpyro.infer.autoguide import AutoGuide

from dopax.config import ExecutionConfig
from dopax.exceptions import FitDivergedError, NotFittedError
from dopax.inference.guide_rows import draw_global_sites, row_guides
from dopax.inference.mcmc import MCMCDriver
from dopax.inference.posterior import Posterior
from dopax.inference.svi import SVIDriver, SVIRunResult, check_losses
from dopax.inference.svi_fit import fit_epochs, fit_steps
from dopax.kernel.tracing import TRACE_LOCK
from dopax.sampling.prepare import BoundArgs
from dopax.sampling.row_latent import COUPLED

__all__ = ["BatchFit", "Driver", "SampleCall", "MCMCFit", "SVIFit", "check_model", "make_driver"]

#: Plain arrays and JSON-ready facts that hold a driver's fit state.
Exported = tuple[dict[str, np.ndarray], dict[str, Any]]


def make_driver(inference: Any, svi_steps_per_chunk: int) -> Driver:
    """Return the driver of ``inference`` (an SVI or MCMC object; anything else: ``TypeError``).

    Args:
        inference: The user's ``numpyro.infer.SVI`` or ``numpyro.infer.MCMC``.
        svi_steps_per_chunk: SVI steps run in one compiled ``scan``
            (``ExecutionConfig.svi_steps_per_chunk``).
    """
    if isinstance(inference, SVI):
        return SVIFit(inference, svi_steps_per_chunk)
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


@dataclasses.dataclass(frozen=True)
class BatchFit:
    """What one ``fit_on_batch`` call asks of a driver.

    Attributes:
        num_steps: SVI steps (MCMC takes its own settings).
        num_samples: Posterior draws to take from an SVI guide.
        progress: Whether to show a progress bar.
        exclude: Site names left out of the posterior draws.
        trace: A :class:`~dopax.ZarrTrace` an MCMC run streams into, or ``None``.
    """

    num_steps: int
    num_samples: int
    progress: bool
    exclude: Iterable[str]
    trace: Any = None


@dataclasses.dataclass(frozen=True)
class SampleCall:
    """What one ``sample`` call asks of a driver.

    Attributes:
        num_samples: Draws (per chain for MCMC).
        kwargs: Kernel arguments as given (for guides that need data).
        exclude: Site names to drop.
        bound: The call's data bound to the kernel, when it gave the
            kernel's input (MCMC then samples the posterior given them).
    """

    num_samples: int
    kwargs: Mapping[str, Any]
    exclude: Iterable[str]
    bound: BoundArgs | None = None


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

    def fit_on_batch(self, key: jax.Array, bound: BoundArgs, call: BatchFit) -> Posterior:
        """Fit on one in-memory batch as ``call`` asks and return the posterior."""
        raise NotImplementedError

    def sample(self, key: jax.Array, call: SampleCall) -> Posterior:
        """Draw posterior samples as ``call`` asks, without replacing the model's posterior."""
        raise NotImplementedError

    def sample_stats(self) -> dict[str, Any] | None:
        """The sampler statistics of the latest draws (flat over chains), or ``None``."""
        return None

    def current_params(self) -> dict[str, Any]:
        """The point values draws are taken with: SVI's parameters (``{}`` for MCMC)."""
        return {}

    def use_result(self, result: Any) -> None:
        """Take ``result`` (``params``, ``losses``) as the fit's outcome (``vi_result = ...``)."""
        self.vi_result = result

    def posterior_from_result(
        self, key: jax.Array, num_samples: int, exclude: Iterable[str]
    ) -> Posterior | None:
        """Draw the posterior that :meth:`use_result`'s result implies, or ``None`` if none can.

        Returns ``None`` when drawing needs the kernel's data (a guide that
        takes arguments) or the inference method has no guide.
        """
        return None

    def export_state(self) -> Exported:
        """Return the fit state beyond the posterior as plain arrays and JSON-ready facts."""
        return {}, {}

    def restore_state(self, arrays: Mapping[str, Any], facts: Mapping[str, Any]) -> None:
        """Take back what :meth:`export_state` returned (for a loaded model).

        Arrays may be values that ``np.asarray`` reads when they are used.
        """

    def diagnostics(self) -> dict[str, float]:
        """Return summary figures of the last fit (MCMC: divergences, max R-hat, min ESS)."""
        return {}


def _leaf_arrays(leaves: list[Any]) -> Exported:
    arrays: dict[str, np.ndarray] = {}
    keys: dict[str, str] = {}
    for i, leaf in enumerate(leaves):
        if jnp.issubdtype(jnp.result_type(leaf), jax.dtypes.prng_key):
            keys[str(i)] = str(jax.random.key_impl(leaf))
            leaf = jax.random.key_data(leaf)
        arrays[f"state/{i:04d}"] = np.asarray(leaf)
    return arrays, {"leaves": len(leaves), "keys": keys}


def _restored(fresh: Any, arrays: Mapping[str, np.ndarray], facts: Mapping[str, Any]) -> Any:
    """Return ``fresh`` (a new SVI state) with the saved leaves put in, checked leaf by leaf."""
    leaves, treedef = jax.tree.flatten(fresh)
    if len(leaves) != int(facts["leaves"]):
        raise ValueError(
            f"The saved SVI state has {facts['leaves']} arrays but this guide and optimizer "
            f"make {len(leaves)}: the model was saved with another guide or optimizer."
        )
    out = []
    for i, leaf in enumerate(leaves):
        value: Any = jnp.asarray(np.asarray(arrays[f"state/{i:04d}"]))
        impl = facts["keys"].get(str(i))
        if impl is not None:
            value = jax.random.wrap_key_data(value, impl=impl)
        if value.shape != jnp.shape(leaf) or value.dtype != jnp.result_type(leaf):
            raise ValueError(
                f"Saved SVI state array {i} has shape {value.shape} and dtype {value.dtype}, "
                f"but the guide set up on this data makes {jnp.shape(leaf)} "
                f"{jnp.result_type(leaf)}: per-row guide parameters need data with as many "
                "rows as the model was fitted on."
            )
        out.append(value)
    return jax.tree.unflatten(treedef, out)


class SVIFit(Driver):
    """Runs an :class:`numpyro.infer.SVI` object and keeps its state.

    Args:
        svi: The user's SVI object (never modified).
        steps_per_chunk: SVI steps run in one compiled ``scan``.
    """

    kind = "svi"

    def __init__(self, svi: SVI, steps_per_chunk: int) -> None:
        self.driver = SVIDriver(svi, steps_per_chunk)
        self.state: Any = None
        self.vi_result = None
        # whether ``vi_result`` was set by hand after the state last moved
        self._from_result = False
        # a loaded model's state, put in once the guide is set up on data
        self._saved: Exported | None = None

    def svi(self, method: str) -> SVIFit:  # noqa: D102
        return self

    def _init(self, key: jax.Array, bound: BoundArgs) -> None:
        if self.state is None:
            state = self.driver.init(key, bound.static, _arrays(bound))
            if self._saved is not None:
                state = _restored(state, *self._saved)
                self._saved = None
            self.state = state

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
        self._from_result = False

    def _guide_ready(self) -> bool:
        """Whether the guide can draw: an automatic guide needs its first run (``svi.init``)."""
        guide = self.driver.svi.guide
        return not isinstance(guide, AutoGuide) or guide.prototype_trace is not None

    def current_params(self) -> dict[str, Any]:
        """The parameters draws are taken with: the latest of the fit state and ``vi_result``."""
        if self.state is not None and not self._from_result:
            return dict(self.driver.params(self.state))
        if self.vi_result is not None:
            return dict(self.vi_result.params)
        return {}

    def use_result(self, result: Any) -> None:  # noqa: D102
        self.vi_result = result
        self._from_result = True

    def posterior_from_result(  # noqa: D102
        self, key: jax.Array, num_samples: int, exclude: Iterable[str]
    ) -> Posterior | None:
        guide = self.driver.svi.guide
        if self.vi_result is None or not isinstance(guide, AutoGuide) or not self._guide_ready():
            return None
        params = self.current_params()
        draws = self.driver.draw_posterior(key, params, num_samples, (), {}, exclude)
        return Posterior(draws, 1, params)

    def draw(
        self, key: jax.Array, num_samples: int, bound: BoundArgs, exclude: Iterable[str]
    ) -> Posterior:
        """Draw the fit's posterior from the fitted guide.

        Per-row latent sites of a guide that factorises over rows are not
        drawn here: the posterior keeps their guide parameters (in
        ``params``) and a row key, and every in-sample call draws them block
        by block, the same draws in every call (see
        :mod:`dopax.inference.guide_rows`).
        """
        params = self.current_params()
        guide = self.driver.svi.guide
        rows = row_guides(guide, bound.n_rows) if self._guide_ready() else {}
        per_call = {k for k, g in rows.items() if g.kind != COUPLED}
        if per_call:
            with TRACE_LOCK:
                draws = draw_global_sites(guide, key, params, num_samples, per_call)
            skip = set(exclude)
            draws = {k: v for k, v in draws.items() if k not in skip}
        else:
            draws = self.driver.draw_posterior(
                key, params, num_samples, bound.static, _arrays(bound), exclude
            )
        # the key that fixes the per-row draws of this posterior for every call
        words = jax.random.bits(jax.random.fold_in(key, 0x524F5753), (2,), jnp.uint32)
        return Posterior(
            draws,
            1,
            params,
            row_guides=rows,
            n_draws=num_samples,
            row_words=np.asarray(words) if per_call else None,
        )

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
                self.driver,
                self.state,
                bound,
                k_shuffle,
                batch_size,
                epochs,
                shuffle,
                loader,
                progress,
            )
        self._finish(state, losses)
        return self.draw(k_post, num_samples, bound, exclude)

    def fit_on_batch(self, key: jax.Array, bound: BoundArgs, call: BatchFit) -> Posterior:  # noqa: D102
        if call.trace is not None:
            raise TypeError("`trace=` streams an MCMC run; this model's inference is SVI.")
        k_init, k_post = jax.random.split(key)
        self._init(k_init, bound)
        state, losses = fit_steps(
            self.driver, self.state, bound, _arrays(bound), call.num_steps, 0, call.progress
        )
        self._finish(state, losses)
        return self.draw(k_post, call.num_samples, bound, call.exclude)

    def step(self, key: jax.Array, bound: BoundArgs) -> tuple[Any, Any]:
        """Run one compiled update step (initialising first with ``key``)."""
        self._init(key, bound)
        self.state, loss = self.driver.step(self.state, bound.static, _arrays(bound))
        self._from_result = False
        return self.state, loss

    def sample(self, key: jax.Array, call: SampleCall) -> Posterior:  # noqa: D102
        if self.state is None and self._saved is not None and not self._guide_ready():
            raise NotFittedError(
                "`sample` draws from the fitted guide, which a loaded model sets up again on "
                "its next fitting call (`fit`, `fit_on_batch` or `train_on_batch` resume from "
                "the saved state); its saved posterior draws serve `predict` as they are."
            )
        params = self.current_params()
        if not params or not self._guide_ready():
            raise NotFittedError(
                "`sample` draws from the fitted guide: call `fit` or `fit_on_batch` first, or "
                "set `vi_result` to an SVI result (`model.vi_result = svi.run(...)`)."
            )
        static = tuple(sorted((k, v) for k, v in call.kwargs.items() if not hasattr(v, "shape")))
        args = {k: jnp.asarray(v) for k, v in call.kwargs.items() if hasattr(v, "shape")}
        draws = self.driver.draw_posterior(
            key, params, call.num_samples, static, args, call.exclude
        )
        return Posterior(draws, 1, params)

    def export_state(self) -> Exported:  # noqa: D102
        arrays: dict[str, np.ndarray] = {}
        facts: dict[str, Any] = {}
        if self.state is not None:
            arrays, facts["state"] = _leaf_arrays(jax.tree.leaves(self.state))
        elif self._saved is not None:
            arrays, facts["state"] = dict(self._saved[0]), dict(self._saved[1])
        if self.vi_result is not None:
            names = sorted(self.vi_result.params)
            facts["params"] = names
            for i, name in enumerate(names):
                arrays[f"params/{i:04d}"] = np.asarray(self.vi_result.params[name])
            arrays["losses"] = np.asarray(self.vi_result.losses)
        return arrays, facts

    def restore_state(  # noqa: D102
        self, arrays: Mapping[str, np.ndarray], facts: Mapping[str, Any]
    ) -> None:
        if "state" in facts:
            # kept as given: a loaded model's are StoredArrays, read when a fit resumes
            saved = {k: v for k, v in arrays.items() if k.startswith("state/")}
            self._saved = (saved, dict(facts["state"]))
        if "params" in facts:
            names = facts["params"]
            params = {n: np.asarray(arrays[f"params/{i:04d}"]) for i, n in enumerate(names)}
            self.vi_result = SVIRunResult(params, np.asarray(arrays["losses"]))

    def __getstate__(self) -> dict[str, Any]:
        return {
            "svi": self.driver.svi,
            "steps_per_chunk": self.driver.steps_per_chunk,
            "state": self.state,
            "vi_result": self.vi_result,
            "saved": self._saved,
            "from_result": self._from_result,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        steps = state.get("steps_per_chunk", ExecutionConfig.svi_steps_per_chunk)
        self.__init__(state["svi"], steps)  # type: ignore[misc]
        self.state = state["state"]
        self.vi_result = state["vi_result"]
        self._saved = state.get("saved")
        self._from_result = bool(state.get("from_result", False))


class MCMCFit(Driver):
    """Runs a private copy of an :class:`numpyro.infer.MCMC` object and keeps its chains.

    Args:
        mcmc: The user's MCMC object (never run or modified).
    """

    kind = "mcmc"

    def __init__(self, mcmc: MCMC) -> None:
        self.driver = MCMCDriver(mcmc)

    def fit_on_batch(self, key: jax.Array, bound: BoundArgs, call: BatchFit) -> Posterior:  # noqa: D102
        # NumPyro traces the kernel while the sampler runs: other threads' tracing waits
        with TRACE_LOCK:
            if call.trace is None:
                self.driver.run(key, bound.static, _arrays(bound), progress=call.progress)
            else:
                self.driver.run_to_trace(
                    call.trace, key, bound.static, _arrays(bound), progress=call.progress
                )
        return Posterior(self.driver.draws(call.exclude), self.driver.num_chains)

    def sample_stats(self) -> dict[str, Any] | None:  # noqa: D102
        return self.driver.sample_stats()

    def sample(self, key: jax.Array, call: SampleCall) -> Posterior:  # noqa: D102
        if call.bound is None and call.kwargs:
            raise ValueError(
                f"`sample` got kernel arguments {sorted(call.kwargs)} but not both the input and "
                "the output: MCMC samples the posterior given data (e.g. "
                "`model.sample(X=X, y=y)`), or, with no arguments, continues its chains."
            )
        if call.bound is None and self.driver.mcmc is None:
            raise NotFittedError(
                "`sample` continues the MCMC chains: call `fit_on_batch` first, or give the "
                "data to sample the posterior of, e.g. `model.sample(X=X, y=y)`."
            )
        with TRACE_LOCK:
            if call.bound is None:
                self.driver.continue_chains(key, call.num_samples, progress=False)
            else:  # new data, a new posterior: warm up and sample on them
                self.driver.run(
                    key,
                    call.bound.static,
                    _arrays(call.bound),
                    progress=False,
                    num_samples=call.num_samples,
                )
        return Posterior(self.driver.draws(call.exclude), self.driver.num_chains)

    def diagnostics(self) -> dict[str, float]:  # noqa: D102
        return self.driver.diagnostics() if self.driver.last_state is not None else {}
