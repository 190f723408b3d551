"""Frozen requests: everything one public call asks the engine for.

The facade checks arguments, resolves the call's key and builds one request;
the engine (:mod:`dopax.execution.engine`) does the rest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax

from dopax.config import ExecutionConfig, get_config
from dopax.inference.posterior import Posterior

__all__ = [
    "PREDICT",
    "PRIOR",
    "LOG_LIKELIHOOD",
    "LooRequest",
    "Output",
    "PredictiveRequest",
    "ScenarioRequest",
    "SummaryRequest",
]

#: Request kinds.
PREDICT = "predict"
PRIOR = "prior_predictive"
LOG_LIKELIHOOD = "log_likelihood"


@dataclasses.dataclass(frozen=True, eq=False)
class Output:
    """Where and how a call's draws go.

    Attributes:
        in_memory: Compute in one piece and return in memory (the
            ``*_on_batch`` methods); otherwise stream block by block.
        return_datatree: For in-memory calls, a DataTree (else a dict).
        batch_size: Rows per block, or ``None`` for the sizing policy.
        store: ``"persistent"`` (Zarr) or ``"memory"``.
        output_dir: Base folder or URL for the call's new sub-folder, a zarr
            store, or ``None``.
        progress: Whether to show a progress bar.
        storage_options: fsspec options for a URL ``output_dir``.
        client: A ``dask.distributed.Client`` to run the blocks on, or ``None``
            (then ``ExecutionConfig.client`` applies).
        config: The call's execution settings: those in force when the call
            began, resolved once (the engine and everything below it read
            them here, never the global settings).
    """

    in_memory: bool = False
    return_datatree: bool = True
    batch_size: int | None = None
    store: str = "persistent"
    output_dir: Any = None
    progress: bool = True
    storage_options: Mapping[str, Any] | None = None
    client: Any = None
    config: ExecutionConfig = dataclasses.field(default_factory=get_config)


@dataclasses.dataclass(frozen=True, eq=False)
class PredictiveRequest:
    """A forward pass: prior or posterior predictive draws, or the log-likelihood.

    Attributes:
        kind: :data:`PREDICT`, :data:`PRIOR` or :data:`LOG_LIKELIHOOD`.
        method: The public method's name (attributes, progress label).
        key: The call's typed PRNG key.
        X: The input.
        y: The observed output (log-likelihood) or ``None``.
        kwargs: Further kernel arguments.
        posterior: Posterior draws to substitute (``None`` for the prior).
        intervention: Site values imposed with ``numpyro.handlers.do``.
        return_sites: Sites asked for, or ``None`` for the defaults.
        in_sample: Whether the rows are the training rows.
        num_samples: Draws of a prior call.
        shard_axis: ``"obs"`` or ``"draw"``.
        output: Where the draws go.
        row_offset: Global index of the first row (for callers that split
            rows over several requests; random numbers follow global rows).
        observed: The output the model was fitted on, for the
            ``observed_data`` group of an in-sample result, or ``None``.
    """

    kind: str
    method: str
    key: jax.Array
    X: Any
    y: Any = None
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    posterior: Posterior | None = None
    intervention: Mapping[str, Any] | None = None
    return_sites: Any = None
    in_sample: bool = True
    num_samples: int | None = None
    shard_axis: str = "obs"
    output: Output = dataclasses.field(default_factory=Output)
    row_offset: int = 0
    observed: Any = None


@dataclasses.dataclass(frozen=True, eq=False)
class ScenarioRequest:
    """A single-pass comparison of scenarios (``compare_scenarios``).

    Attributes:
        key: The call's typed PRNG key.
        X: The base input.
        scenarios: Scenario name to overrides.
        baseline: Name of the baseline scenario.
        site: Outcome site, or ``None`` for the output site.
        by: Per-row group labels, or ``None``.
        interval: Central interval probability of per-row contrasts.
        keep_draws: Also stream every scenario's draws of the site.
        kwargs: Base kernel arguments.
        posterior: The posterior.
        output: Where kept draws go (and the block size, progress).
    """

    key: jax.Array
    X: Any
    scenarios: Mapping[str, Mapping[str, Any]]
    baseline: str
    site: str | None
    by: Any
    interval: float
    keep_draws: bool
    kwargs: Mapping[str, Any]
    posterior: Posterior
    output: Output = dataclasses.field(default_factory=Output)


@dataclasses.dataclass(frozen=True, eq=False)
class SummaryRequest:
    """Per-row summaries of a posterior-predictive pass (``summarize``).

    Attributes:
        forward: The forward pass (a :data:`PREDICT` request) to summarise.
        observed: The observed output (one entry per row), or ``None``.
        prob: Probability of the interval.
        interval: ``"eti"`` or ``"hdi"``.
        quantiles: Extra quantiles.
    """

    forward: PredictiveRequest
    observed: Any = None
    prob: float = 0.94
    interval: str = "eti"
    quantiles: tuple[float, ...] = ()


@dataclasses.dataclass(frozen=True, eq=False)
class LooRequest:
    """PSIS-LOO of the output site (``loo``).

    Attributes:
        forward: The log-likelihood pass (a :data:`LOG_LIKELIHOOD` request).
        reff: Relative effective sample size of the draws, or ``None`` to
            estimate it from the posterior as ArviZ does.
    """

    forward: PredictiveRequest
    reff: float | None = None
