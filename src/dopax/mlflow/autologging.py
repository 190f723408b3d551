"""MLflow autologging for dopax: ``fit`` and ``fit_on_batch`` log what they did.

Each call logs its arguments and the inference settings as parameters, the
SVI loss per step (metric ``loss``, continuing the steps of earlier calls in
the same run) or the MCMC diagnostics (``divergences``, ``max_rhat``,
``min_ess``), the kernel's source (``kernel.py``) and, unless
``log_models=False``, the model (``model``).
"""

from __future__ import annotations

import inspect
import json
import time
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from mlflow.utils.autologging_utils import (
    autologging_integration,
    get_autologging_config,
    safe_patch,
)

from dopax.mlflow.flavor import FLAVOR_NAME, log_model
from dopax.model.impact_model import ImpactModel
from dopax.model.snapshot import fit_diagnostics, snapshot
from dopax.persist.inference import describe_inference
from dopax.persist.source import CodeFile, NotRecordableError

__all__ = ["autolog"]

#: Most metric values MLflow takes in one batch.
_BATCH = 1000


def _flat(prefix: str, value: Any, out: dict[str, str]) -> None:
    """Flatten a recorded object (:mod:`dopax.persist.values`) into ``prefix.key`` parameters."""
    if not isinstance(value, dict):
        out[prefix] = str(value)[:500]
    elif "class" in value:
        out[prefix] = str(value["class"]).rpartition(":")[2]
        for k, v in value["kwargs"].items():
            _flat(f"{prefix}.{k}", v, out)
    elif "autoguide" in value:
        _flat(prefix, value["autoguide"], out)
    elif "dict" in value:
        for k, v in value["dict"].items():
            _flat(f"{prefix}.{k}", v, out)
    elif "call" in value and len(value["kwargs"]) == 1:  # a constant schedule
        _flat(prefix, next(iter(value["kwargs"].values())), out)
    elif "ref" in value:
        out[prefix] = str(value["ref"])
    else:
        out[prefix] = json.dumps(value)[:500]


def _params(model: ImpactModel, method: str, bound: inspect.BoundArguments) -> dict[str, str]:
    out = {"method": method, "inference": type(model.inference).__name__}
    for name, value in bound.arguments.items():
        if name in ("self", "kwargs", "X", "y", "rng_key", "progress"):
            continue
        out[name] = str(value)
    shape = getattr(bound.arguments.get("X"), "shape", None)
    if shape:
        out["num_rows"] = str(shape[0])
    try:
        desc = describe_inference(model.inference, model.kernel, CodeFile())
    except NotRecordableError:
        return out
    for part in ("guide", "optim", "loss", "sampler", "mcmc"):
        if part in desc:
            _flat(part, desc[part], out)
    return out


def _log_losses(run_id: str, losses: np.ndarray, every: int) -> None:
    client = MlflowClient()
    start = len(client.get_metric_history(run_id, "loss"))
    now = int(time.time() * 1000)
    index = np.arange(0, len(losses), max(1, every))
    metrics = [Metric("loss", float(losses[i]), now, start + int(i)) for i in index]
    for i in range(0, len(metrics), _BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + _BATCH])


def _kernel_source(kernel: Any) -> str:
    try:
        return inspect.getsource(kernel)
    except (OSError, TypeError):
        return f"# The source of {getattr(kernel, '__qualname__', kernel)!r} is not available.\n"


def _after_fit(model: ImpactModel, method: str, bound: inspect.BoundArguments) -> None:
    run = mlflow.active_run()
    if run is None:  # pragma: no cover - safe_patch manages a run
        return
    run_id = run.info.run_id
    logged = mlflow.get_run(run_id).data.params
    params = {k: v for k, v in _params(model, method, bound).items() if k not in logged}
    if params:
        mlflow.log_params(params)
    if snapshot(model).fit_kind == "svi" and model.vi_result is not None:
        losses = np.asarray(model.vi_result.losses, dtype=np.float64)
        every = int(get_autologging_config(FLAVOR_NAME, "log_every_n_steps", 1))
        _log_losses(run_id, losses, every)
        if losses.size:
            mlflow.log_metric("final_loss", float(losses[-1]))
    metrics = fit_diagnostics(model)
    if metrics:
        mlflow.log_metrics(metrics)
    mlflow.log_text(_kernel_source(model.kernel), "kernel.py")
    if get_autologging_config(FLAVOR_NAME, "log_models", True):
        log_model(
            model,
            name="model",
            registered_model_name=get_autologging_config(
                FLAVOR_NAME, "registered_model_name", None
            ),
        )


def _patch(method: str) -> Any:
    signature = inspect.signature(getattr(ImpactModel, method))

    def patched(original: Any, self: ImpactModel, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        _after_fit(self, method, bound)
        return result

    return patched


@autologging_integration(FLAVOR_NAME)
def autolog(
    log_models: bool = True,
    log_every_n_steps: int = 1,
    disable: bool = False,
    exclusive: bool = False,
    disable_for_unsupported_versions: bool = False,
    silent: bool = False,
    registered_model_name: str | None = None,
    extra_tags: dict[str, str] | None = None,
) -> None:
    """Log every ``fit`` and ``fit_on_batch`` of an :class:`~dopax.ImpactModel` to MLflow.

    A call without an active run starts one and ends it afterwards.

    Args:
        log_models: Log the fitted model (name ``model``) after each call.
        log_every_n_steps: Log the SVI loss of every n-th step.
        disable: Turn dopax autologging off (patches are removed).
        exclusive: Do not log into runs the user started.
        disable_for_unsupported_versions: Accepted for MLflow's interface; dopax
            logs with every version it installs with.
        silent: Hide MLflow's event logs and warnings during autologging.
        registered_model_name: Register each logged model under this name.
        extra_tags: Tags set on each run autologging starts.
    """
    del log_models, log_every_n_steps, exclusive, disable_for_unsupported_versions, silent
    del registered_model_name, disable
    for method in ("fit", "fit_on_batch"):
        safe_patch(
            FLAVOR_NAME, ImpactModel, method, _patch(method), manage_run=True, extra_tags=extra_tags
        )
