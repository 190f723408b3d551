"""What the layers above the facade read from a model, and put back into one.

Saved models, the MLflow flavor, the command line and table scoring see a
model's fitted state only through these functions: a :class:`Snapshot` of
what it holds, its fit driver's arrays and diagnostics, the schema of its
inputs, and the steps that give a loaded model its state back. The model's
own attributes stay its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import xarray as xr

from dopax.config import get_config
from dopax.execution.answers import run_summary
from dopax.execution.request import SummaryRequest
from dopax.inference.posterior import Posterior
from dopax.kernel.spec import KernelSpec
from dopax.model.impact_model import ImpactModel
from dopax.sampling.inputs import InputSchema, input_schema

__all__ = [
    "Snapshot",
    "example_schema",
    "fit_diagnostics",
    "fit_params",
    "fit_state",
    "input_schema_of",
    "restore_fit",
    "restore_posterior",
    "run_summary_request",
    "snapshot",
]


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A model's fitted state, as saving and scoring read it.

    Attributes:
        spec: What the kernel's traces revealed, or ``None`` before any.
        inputs: The schema of the last fitting call's arguments, or ``None``.
        posterior: The posterior draws, or ``None`` before a fit.
        fit_kind: The fit driver's kind (``"svi"`` or ``"mcmc"``).
        key: The model's typed key (calls derive theirs from it).
        call_count: The counter of the next call key the model derives.
    """

    spec: KernelSpec | None
    inputs: InputSchema | None
    posterior: Posterior | None
    fit_kind: str
    key: jax.Array
    call_count: int


def snapshot(model: ImpactModel) -> Snapshot:
    """Return what ``model`` holds besides its constructor arguments (nothing is copied)."""
    state = model._state
    return Snapshot(
        spec=state.ctx.spec,
        inputs=state.ctx.inputs,
        posterior=state.posterior,
        fit_kind=state.driver.kind,
        key=state.key,
        call_count=state.call_count,
    )


def input_schema_of(model: ImpactModel) -> InputSchema | None:
    """Return the schema of the arguments ``model`` was last fitted on (``None``: never fitted)."""
    return model._state.ctx.inputs


def example_schema(model: ImpactModel, X: Any, kwargs: Mapping[str, Any]) -> InputSchema:
    """Return the input schema of example arguments, bound as a call of ``model`` binds them.

    Args:
        model: The model.
        X: The example input.
        kwargs: Further kernel arguments of the example.
    """
    bound = model._state.ctx.bind(X, None, kwargs, get_config())
    return input_schema(bound, model.param_input, model.param_output)


def fit_state(model: ImpactModel) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Return the fit driver's state as ``(arrays, facts)`` (what a loaded model resumes from)."""
    return model._state.driver.export_state()


def fit_diagnostics(model: ImpactModel) -> dict[str, float]:
    """Return the last fit's diagnostics (MCMC: divergences, R-hat, ESS; SVI: none)."""
    return model._state.driver.diagnostics()


def fit_params(model: ImpactModel) -> dict[str, Any]:
    """Return the fit's point values (guide and ``numpyro.param`` values) by name."""
    return model._state.driver.current_params()


def restore_fit(
    model: ImpactModel,
    *,
    spec: KernelSpec | None,
    inputs: InputSchema | None,
    fit: tuple[Mapping[str, Any], Mapping[str, Any]] | None,
) -> None:
    """Give a freshly built model the spec, input schema and fit state it was saved with.

    Args:
        model: The model, just constructed.
        spec: The saved kernel spec.
        inputs: The saved input schema.
        fit: The saved fit state as ``(arrays, facts)`` (arrays, or values
            ``np.asarray`` reads when they are used), or ``None`` when
            it belongs to another kind of driver (it is then left out).

    Raises:
        KeyError, ValueError, TypeError, IndexError: If the fit state does
            not fit the model's driver.
    """
    state = model._state
    state.ctx.spec = spec
    state.ctx.inputs = inputs
    if fit is not None:
        state.driver.restore_state(*fit)


def restore_posterior(model: ImpactModel, posterior: Posterior | None, call_count: int) -> None:
    """Give a loaded model its posterior draws and continue its call keys from ``call_count``."""
    state = model._state
    if posterior is not None:
        state.posterior = posterior
    state.resume_count(call_count)


def run_summary_request(model: ImpactModel, request: SummaryRequest) -> xr.DataTree:
    """Run a ``summarize`` request built outside the facade on ``model``'s engine context.

    The request carries its own key and posterior, so the model's call
    counter does not move.
    """
    return run_summary(model._state.ctx, request)
