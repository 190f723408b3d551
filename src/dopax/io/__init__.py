"""Saved models, the MLflow flavor's machinery and the ``dopax`` command line.

:func:`save_model` writes a fitted model to a folder (a JSON manifest, Zarr
arrays, the kernel as an import reference or a code file) and
:func:`load_model` reads it back; :mod:`dopax.mlflow` and :mod:`dopax.io.cli`
build on them.
"""

from dopax.io.saved import load_model, save_model

__all__ = ["load_model", "save_model"]
