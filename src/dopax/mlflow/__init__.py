"""The ``dopax`` MLflow flavor (install with ``pip install 'dopax[mlflow]'``).

- :func:`save_model` / :func:`log_model`: an MLflow model holding a
  :func:`dopax.save_model` folder, pinned pip requirements and a signature
  (input columns from the model's input schema; the pyfunc's parameters).
- :func:`load_model`: the :class:`~dopax.ImpactModel` back.
- ``mlflow.pyfunc.load_model(uri).predict(df, params=...)`` and
  ``mlflow models serve``: per-row summaries (``<site>_mean``, ``_sd``,
  ``_lower``, ``_upper``) of a DataFrame whose columns hold the kernel's
  per-row arguments (``t``; ``X_0``, ``X_1``, ...). Parameters:
  ``return_sites``, ``num_draws``, ``intervention`` (JSON object),
  ``prob`` and ``seed``.
- :func:`autolog`: ``fit`` and ``fit_on_batch`` log their parameters, the
  SVI loss per step or the MCMC diagnostics, the kernel's source and the model.
"""

try:
    import mlflow as _mlflow  # noqa: F401
except ImportError as err:  # pragma: no cover - the extra is installed for the tests
    raise ImportError("dopax.mlflow needs MLflow: `pip install 'dopax[mlflow]'`.") from err

from dopax.mlflow.autologging import autolog
from dopax.mlflow.flavor import (
    FLAVOR_NAME,
    get_default_pip_requirements,
    load_model,
    log_model,
    save_model,
)

# the pyfunc loader MLflow looks up in this module (``loader_module: dopax.mlflow``)
from dopax.mlflow.flavor import _load_pyfunc as _load_pyfunc

__all__ = [
    "FLAVOR_NAME",
    "autolog",
    "get_default_pip_requirements",
    "load_model",
    "log_model",
    "save_model",
]
