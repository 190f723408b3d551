"""The table predictor behind the MLflow pyfunc: a DataFrame in, per-row summaries out.

Kept free of MLflow so that it runs (and is tested) wherever dopax does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import pandas as pd

from dopax.data.finite import check_finite
from dopax.model.impact_model import ImpactModel
from dopax.model.snapshot import input_schema_of
from dopax.tables.scoring import summarize_rows
from dopax.tables.tabular import arg_columns, bind_frame, check_required, with_static_defaults

__all__ = ["PARAMS", "TablePredictor"]

#: The pyfunc's parameters and their defaults (``[]``, ``0``, ``""`` and ``-1`` mean "not set").
PARAMS: dict[str, Any] = {
    "return_sites": [],
    "num_draws": 0,
    "intervention": "",
    "prob": 0.94,
    "seed": -1,
}

_MLFLOW_TYPES = {"f": "double", "i": "long", "u": "long", "b": "boolean"}


def _sites(value: Any) -> list[str] | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [str(n).strip() for n in names if str(n).strip()]
    return names or None


def _intervention(value: Any) -> dict[str, Any] | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"`intervention` must be a JSON object of site name to value; got {value!r}."
            ) from err
    if not isinstance(value, Mapping):
        raise ValueError(f"`intervention` must map site names to values; got {value!r}.")
    return {str(k): np.asarray(v, dtype=np.float32) for k, v in value.items()}


class TablePredictor:
    """Predict per-row summaries of a table of new rows with a fitted model.

    Args:
        model: The fitted model.
    """

    def __init__(self, model: ImpactModel) -> None:
        self.model = model

    @property
    def schema(self) -> Any:
        """The model's input schema (``None`` if it was never fitted)."""
        return input_schema_of(self.model)

    def input_columns(self) -> list[tuple[str, str]]:
        """Return ``(column, MLflow type)`` of each column the model reads (none without schema)."""
        if self.schema is None:
            return []
        return [
            (col, _MLFLOW_TYPES.get(np.dtype(arg.dtype).kind, "double"))
            for arg in self.schema.rows
            for col in arg_columns(arg)
        ]

    def predict(self, data: Any, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        """Return per-row summaries (see :func:`dopax.tables.scoring.summarize_rows`).

        Args:
            data: A DataFrame (or anything ``pandas.DataFrame`` accepts) whose
                columns hold the kernel's per-row arguments.
            params: ``return_sites`` (names, or a comma-separated string),
                ``num_draws`` (posterior draws to use), ``intervention`` (a
                JSON object or dict of site values), ``prob`` (interval
                probability) and ``seed`` (key of the draws; default the
                model's own key).
        """
        frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(data)
        p = {**PARAMS, **{k: v for k, v in (params or {}).items() if v is not None}}
        unknown = sorted(set(p) - set(PARAMS))
        if unknown:
            raise ValueError(f"Unknown parameter(s) {unknown}; known: {sorted(PARAMS)}.")
        model = self.model
        args = bind_frame(frame, self.schema, model.kernel, model.param_output, "the input table")
        check_finite(args, len(frame), "the input table")
        args = with_static_defaults(args, self.schema)
        check_required(args, model.kernel, model.param_output, "the input table")
        X = args.pop(model.param_input)
        seed = int(p["seed"])
        out = summarize_rows(
            model,
            X,
            args,
            return_sites=_sites(p["return_sites"]),
            num_draws=int(p["num_draws"]) or None,
            intervention=_intervention(p["intervention"]),
            prob=float(p["prob"]),
            rng_key=None if seed < 0 else jax.random.key(seed),
        )
        out.index = frame.index
        return out
