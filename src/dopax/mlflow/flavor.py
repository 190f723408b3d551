"""The ``dopax`` MLflow flavor: save, log and load models; the pyfunc loader.

An MLflow model of this flavor is a folder with ``MLmodel``, the environment
files (``requirements.txt`` pinning dopax, jax, jaxlib and numpyro) and a
``model/`` sub-folder written by :func:`dopax.save_model`. Its
``python_function`` flavor serves per-row summaries of a DataFrame (see
:class:`dopax.tables.predictor.TablePredictor`), so ``mlflow models serve`` answers
REST requests. Public names are re-exported by :mod:`dopax.mlflow`.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import pandas as pd
from mlflow import pyfunc
from mlflow.models import Model, ModelSignature
from mlflow.models.model import MLMODEL_FILE_NAME
from mlflow.models.utils import _save_example
from mlflow.tracking.artifact_utils import _download_artifact_from_uri
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.utils.environment import (
    _CONDA_ENV_FILE_NAME,
    _CONSTRAINTS_FILE_NAME,
    _PYTHON_ENV_FILE_NAME,
    _REQUIREMENTS_FILE_NAME,
    _process_conda_env,
    _process_pip_requirements,
    _PythonEnv,
)
from mlflow.utils.file_utils import write_to
from mlflow.utils.model_utils import (
    _add_code_from_conf_to_system_path,
    _get_flavor_configuration,
    _validate_and_copy_code_paths,
    _validate_and_prepare_target_save_path,
)
from mlflow.utils.requirements_utils import _get_pinned_requirement

from dopax._version import __version__
from dopax.model.impact_model import ImpactModel
from dopax.persist.saved import load_model as load_saved
from dopax.persist.saved import save_model as save_saved
from dopax.tables.predictor import PARAMS, TablePredictor

__all__ = [
    "FLAVOR_NAME",
    "get_default_pip_requirements",
    "load_model",
    "log_model",
    "save_model",
]

logger = logging.getLogger("dopax")

FLAVOR_NAME = "dopax"
_DATA = "model"
_PARAM_TYPES = {"return_sites": "string", "num_draws": "long", "intervention": "string"}


def get_default_pip_requirements(include_cloudpickle: bool = False) -> list[str]:
    """Return the pinned requirements of a dopax MLflow model (what this process runs).

    Args:
        include_cloudpickle: Also pin cloudpickle (models whose kernel is pickled).
    """
    names = ["dopax", "jax", "jaxlib", "numpyro"] + (["cloudpickle"] if include_cloudpickle else [])
    return [_get_pinned_requirement(name) for name in names]


def params_schema() -> ParamSchema:
    """Return the parameters the pyfunc takes, with their defaults."""
    specs = []
    for name, default in PARAMS.items():
        dtype = _PARAM_TYPES.get(name) or ("double" if isinstance(default, float) else "long")
        shape = (-1,) if isinstance(default, list) else None
        specs.append(ParamSpec(name, dtype, default, shape))
    return ParamSchema(specs)


def _signature(predictor: TablePredictor, example: pd.DataFrame | None) -> ModelSignature | None:
    """Inputs from the input schema, outputs from the example's summaries, and the parameters.

    Float columns are declared ``double`` so REST clients' JSON numbers pass;
    the model converts them to its own dtypes. The example runs with the
    model's own key, so the model's call counter does not move.
    """
    columns = predictor.input_columns()
    if not columns and example is not None:
        columns = [(str(c), "double") for c in example.columns]
    if not columns:
        return None
    outputs = None
    if example is not None:
        out = predictor.predict(example)
        outputs = Schema([ColSpec("double", str(c)) for c in out.columns])
    inputs = Schema([ColSpec(dtype, name) for name, dtype in columns])  # type: ignore[arg-type]
    return ModelSignature(inputs=inputs, outputs=outputs, params=params_schema())


def save_model(
    dopax_model: ImpactModel,
    path: str,
    conda_env: Any = None,
    code_paths: list[str] | None = None,
    mlflow_model: Model | None = None,
    signature: ModelSignature | None = None,
    input_example: Any = None,
    pip_requirements: Any = None,
    extra_pip_requirements: Any = None,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Save a model as an MLflow model of the ``dopax`` flavor (with a pyfunc flavor).

    Args:
        dopax_model: The fitted model.
        path: A new local folder.
        conda_env: A conda environment (dict or YAML path) instead of the default.
        code_paths: Local files or folders copied with the model and put on
            ``sys.path`` when it loads (e.g. the module of the kernel).
        mlflow_model: The :class:`mlflow.models.Model` to add the flavor to.
        signature: The model signature; by default inputs from the model's
            input schema (columns as the command line names them),
            outputs from ``input_example``'s summaries, and the pyfunc's
            parameters.
        input_example: A DataFrame of a few rows (saved with the model).
        pip_requirements: Requirements instead of the default pinned ones.
        extra_pip_requirements: Requirements added to the default ones.
        metadata: Free-form metadata saved in ``MLmodel``.
    """
    path = os.path.abspath(path)
    _validate_and_prepare_target_save_path(path)
    code_dir = _validate_and_copy_code_paths(code_paths, path)
    mlflow_model = mlflow_model if mlflow_model is not None else Model()
    example = None
    if input_example is not None:
        example = (
            input_example
            if isinstance(input_example, pd.DataFrame)
            else pd.DataFrame(input_example)
        )
        _save_example(mlflow_model, example, path)
    if signature is None:
        signature = _signature(TablePredictor(dopax_model), example)
    if signature is not None:
        mlflow_model.signature = signature
    if metadata is not None:
        mlflow_model.metadata = metadata
    save_saved(dopax_model, os.path.join(path, _DATA))
    pickled = any(
        os.path.exists(os.path.join(path, _DATA, name)) for name in ("kernel.pkl", "inference.pkl")
    )
    pyfunc.add_to_model(
        mlflow_model,
        loader_module="dopax.mlflow",
        data=_DATA,
        code=code_dir,
        conda_env=_CONDA_ENV_FILE_NAME,
        python_env=_PYTHON_ENV_FILE_NAME,
    )
    mlflow_model.add_flavor(FLAVOR_NAME, dopax_version=__version__, data=_DATA, code=code_dir)
    mlflow_model.save(os.path.join(path, MLMODEL_FILE_NAME))
    if conda_env is None:
        defaults = get_default_pip_requirements(pickled) if pip_requirements is None else None
        conda_env, reqs, constraints = _process_pip_requirements(
            defaults, pip_requirements, extra_pip_requirements
        )
    else:
        conda_env, reqs, constraints = _process_conda_env(conda_env)
    import yaml

    with open(os.path.join(path, _CONDA_ENV_FILE_NAME), "w") as f:
        yaml.safe_dump(conda_env, stream=f, default_flow_style=False)
    if constraints:
        write_to(os.path.join(path, _CONSTRAINTS_FILE_NAME), "\n".join(constraints))
    write_to(os.path.join(path, _REQUIREMENTS_FILE_NAME), "\n".join(reqs))
    _PythonEnv.current().to_yaml(os.path.join(path, _PYTHON_ENV_FILE_NAME))


def log_model(
    dopax_model: ImpactModel,
    name: str | None = None,
    *,
    artifact_path: str | None = None,
    registered_model_name: str | None = None,
    signature: ModelSignature | None = None,
    input_example: Any = None,
    code_paths: list[str] | None = None,
    pip_requirements: Any = None,
    extra_pip_requirements: Any = None,
    metadata: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """Log a model to the active MLflow run (starting one if none is active).

    Args:
        dopax_model: The fitted model.
        name: The model's name in the run (MLflow 3; ``artifact_path`` in older code).
        artifact_path: Deprecated alias of ``name``.
        registered_model_name: Also register the model under this name.
        signature: See :func:`save_model`.
        input_example: See :func:`save_model`.
        code_paths: See :func:`save_model`.
        pip_requirements: See :func:`save_model`.
        extra_pip_requirements: See :func:`save_model`.
        metadata: See :func:`save_model`.
        **kwargs: Further arguments of :meth:`mlflow.models.Model.log`
            (``params``, ``tags``, ``step``, ...).

    Returns:
        The :class:`mlflow.models.model.ModelInfo` of the logged model.
    """
    return Model.log(
        artifact_path=artifact_path,
        name=name,
        flavor=sys.modules[__name__],
        flavor_name="dopax.mlflow",
        dopax_model=dopax_model,
        registered_model_name=registered_model_name,
        signature=signature,
        input_example=input_example,
        code_paths=code_paths,
        pip_requirements=pip_requirements,
        extra_pip_requirements=extra_pip_requirements,
        metadata=metadata,
        **kwargs,
    )


def load_model(
    model_uri: str,
    dst_path: str | None = None,
    *,
    trust_code: bool = True,
    allow_pickle: bool = False,
) -> Any:
    """Load a model of the ``dopax`` flavor as an :class:`~dopax.ImpactModel`.

    Like MLflow's own flavors, this trusts the model: its ``code_paths`` go on
    ``sys.path`` and its kernel's code runs (see :func:`dopax.load_model`).
    Load only models you trust, as MLflow's documentation says of every
    flavor; ``trust_code=False`` loads a model's data only, as
    :func:`dopax.load_model` does by default.

    Args:
        model_uri: Any MLflow model URI (``runs:/<run>/model``, ``models:/<name>/1``,
            a local folder).
        dst_path: Local folder to download the model to (default: a temporary one).
        trust_code: Run the model's code (its ``code_paths``, its kernel's
            module or ``kernel.py``); see :func:`dopax.load_model`.
        allow_pickle: See :func:`dopax.load_model`.

    Returns:
        The model.
    """
    local = _download_artifact_from_uri(artifact_uri=model_uri, output_path=dst_path)
    conf = _get_flavor_configuration(model_path=local, flavor_name=FLAVOR_NAME)
    if trust_code:
        _add_code_from_conf_to_system_path(local, conf)
    return load_saved(
        os.path.join(local, conf.get("data", _DATA)),
        trust_code=trust_code,
        allow_pickle=allow_pickle,
    )


def _load_pyfunc(path: str, model_config: dict[str, Any] | None = None) -> TablePredictor:
    """Load the pyfunc implementation (called by ``mlflow.pyfunc.load_model``).

    ``mlflow.pyfunc.load_model`` trusts the model it loads, for every flavor
    (MLflow's own flavors unpickle theirs): the kernel's module is imported,
    or the model's ``kernel.py`` run, as with ``dopax.load_model(path,
    trust_code=True)``.

    Args:
        path: The ``model/`` folder of the MLflow model.
        model_config: ``{"allow_pickle": True}`` loads models whose kernel is pickled.
    """
    allow = bool((model_config or {}).get("allow_pickle", False))
    return ServedPredictor(load_saved(path, trust_code=True, allow_pickle=allow))


class ServedPredictor(TablePredictor):
    """The pyfunc's predictor: dopax's errors become MLflow's, so REST clients get their status.

    A bad request (rows that do not fit the model, NaN or Inf, an unknown
    parameter: a ``ValueError`` or ``TypeError``, dopax's input errors among
    them) is an ``MlflowException`` with ``INVALID_PARAMETER_VALUE`` (HTTP 400)
    carrying dopax's message, and no traceback or server path. Any other
    failure is logged on the server and answered with ``INTERNAL_ERROR``
    (HTTP 500) and a message naming only the kind of error.
    """

    def predict(self, data: Any, params: Any = None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

        try:
            return super().predict(data, params)
        except (ValueError, TypeError, KeyError) as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            raise MlflowException(str(message), error_code=INVALID_PARAMETER_VALUE) from None
        except Exception as err:
            logger.exception("dopax could not score a request")
            raise MlflowException(
                f"dopax could not score the request ({type(err).__name__}); the server's log "
                "has the details.",
                error_code=INTERNAL_ERROR,
            ) from None
