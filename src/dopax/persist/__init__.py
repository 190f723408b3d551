"""Saved models: a fitted model as a folder, and what loading one may run.

:func:`save_model` writes a fitted model to a folder (a JSON manifest, Zarr
arrays, the kernel as an import reference or a code file) and
:func:`load_model` reads it back; :mod:`dopax.mlflow` and the command line
(:mod:`dopax.cli`) build on them.
"""

from dopax.persist.saved import load_model, save_model

__all__ = ["load_model", "save_model"]
