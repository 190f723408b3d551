"""The fitted state of a model: one record, checked by one helper."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import jax
import jax.numpy as jnp

from dopax.exceptions import NotFittedError
from dopax.execution.context import ModelContext
from dopax.execution.request import PRIOR, Output, PredictiveRequest
from dopax.inference.driver import Driver
from dopax.inference.posterior import Posterior
from dopax.sampling.keys import check_key, typed_key

__all__ = ["FittedState", "Posterior", "require_posterior"]


@dataclasses.dataclass(eq=False)
class FittedState:
    """Everything a model holds besides its constructor arguments.

    Attributes:
        ctx: The engine's view of the model (kernel, spec, caches, temp folder).
        driver: The fit driver (SVI or MCMC) with its fit state.
        key_in: The key given at construction (converted on first use).
        posterior: Posterior draws, or ``None`` before a fit.
        observed: The output the model was fitted on (one row vector), or
            ``None``; in-sample results carry it as ``observed_data``.
    """

    ctx: ModelContext
    driver: Driver
    key_in: Any
    posterior: Posterior | None = None
    observed: Any = None
    _key: jax.Array | None = None
    _counter: Any = dataclasses.field(default_factory=itertools.count)

    @property
    def key(self) -> jax.Array:
        """The model's typed key."""
        if self._key is None:
            self._key = typed_key(self.key_in)
        return self._key

    def call_key(self, rng_key: Any) -> jax.Array:
        """Return a call's key: ``rng_key`` checked, or one derived from the model's key.

        Derived keys fold a call counter into the model's key, so a script
        re-run gives the same results.

        Args:
            rng_key: The call's ``rng_key`` argument, or ``None``.
        """
        if rng_key is not None:
            check_key(rng_key)
            return typed_key(rng_key)
        return jax.random.fold_in(self.key, next(self._counter))

    @property
    def call_count(self) -> int:
        """How many call keys the model has derived (the counter of the next one)."""
        count = next(self._counter)
        self._counter = itertools.count(count)
        return count

    def resume_count(self, count: int) -> None:
        """Continue deriving call keys from counter ``count`` (a loaded model's)."""
        self._counter = itertools.count(int(count))

    def request(
        self, kind: str, method: str, X: Any, output: Output, **fields: Any
    ) -> PredictiveRequest:
        """Return a forward request of one call: the posterior it needs, and its key.

        Args:
            kind: The request's kind (a prior call needs no posterior).
            method: The public method's name.
            X: The input.
            output: Where the draws go.
            **fields: Further fields of the request; ``rng_key`` is the call's
                key argument (derived from the model's key when ``None``).
        """
        posterior = None if kind == PRIOR else require_posterior(self.posterior, method)
        key = self.call_key(fields.pop("rng_key", None))
        return PredictiveRequest(
            kind=kind, method=method, key=key, X=X, posterior=posterior, output=output, **fields
        )

    def __getstate__(self) -> dict[str, Any]:
        count = self.call_count
        key = self.key
        return {
            "ctx": self.ctx,
            "driver": self.driver,
            "posterior": self.posterior,
            "observed": self.observed,
            "key_data": jax.random.key_data(key),
            "key_impl": str(jax.random.key_impl(key)),
            "count": count,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        key = jax.random.wrap_key_data(jnp.asarray(state["key_data"]), impl=state["key_impl"])
        self.__init__(  # type: ignore[misc]
            ctx=state["ctx"],
            driver=state["driver"],
            key_in=key,
            posterior=state["posterior"],
            observed=state.get("observed"),
            _key=key,
            _counter=itertools.count(state["count"]),
        )


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
