"""Input files of the command line, read into kernel arguments.

- Parquet (``.parquet``, ``.pq``) and CSV (``.csv``): columns as the MLflow
  pyfunc reads them (``t``; ``X_0``, ``X_1``, ...; see :mod:`dopax.tables.tabular`).
- Zarr (a ``.zarr`` folder) and NPZ (``.npz``): arrays named after kernel
  arguments. Zarr arrays are read block by block, so inputs need not fit in memory.
- NPY (``.npy``): the input array alone (memory-mapped).

Static arguments of the fitting call are passed again unless the file holds them.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from dopax.data.finite import check_finite
from dopax.model.impact_model import ImpactModel
from dopax.model.snapshot import input_schema_of
from dopax.tables.tabular import bind_frame, check_required, with_static_defaults

__all__ = ["FORMATS", "InputFile", "read_input"]

#: File suffixes the command line reads.
FORMATS = (".parquet", ".pq", ".csv", ".zarr", ".npz", ".npy")


class InputFile:
    """An input file read for a model.

    Attributes:
        args: Kernel arguments, the input included.
        frame: The table, for tabular files (``--by`` reads its columns).
        n_rows: Number of rows.
        observed: The observed output (the column or array named after the
            kernel's output), or ``None``.
    """

    def __init__(self, args: dict[str, Any], frame: pd.DataFrame | None) -> None:
        self.args = args
        self.frame = frame
        self.n_rows = 0
        self.observed: Any = None

    def column(self, name: str) -> np.ndarray | None:
        """Return a column of the table or an array of the file named ``name``, if any."""
        if self.frame is not None and name in self.frame.columns:
            return self.frame[name].to_numpy()
        value = self.args.get(name)
        return None if value is None else np.asarray(value)


def _kind(path: str) -> str:
    stripped = path.rstrip("/")
    suffix = os.path.splitext(stripped)[1].lower()
    if suffix == ".zarr" or (
        os.path.isdir(path) and os.path.exists(os.path.join(path, "zarr.json"))
    ):
        return ".zarr"
    if suffix not in FORMATS:
        raise ValueError(
            f"INPUT {path}: unknown format {suffix or '(no suffix)'!r}; use one of "
            f"{', '.join(FORMATS)}."
        )
    return suffix


def read_input(path: str, model: ImpactModel) -> InputFile:
    """Read ``path`` into the kernel arguments of ``model``.

    Args:
        path: The input file or folder.
        model: The loaded model (its input schema binds table columns).

    Raises:
        ValueError: Naming ``INPUT`` and, where it applies, the kernel
            argument that is missing or malformed.
    """
    if not os.path.exists(path):
        raise ValueError(f"INPUT {path}: no such file or folder.")
    kind = _kind(path)
    schema = input_schema_of(model)
    frame = None
    source = f"INPUT {os.path.basename(path.rstrip('/'))}"
    if kind in (".parquet", ".pq", ".csv"):
        try:
            frame = pd.read_csv(path) if kind == ".csv" else pd.read_parquet(path)
        except ImportError as err:
            raise ValueError(
                f"{source}: reading Parquet needs pyarrow (`pip install pyarrow`)."
            ) from err
        args: dict[str, Any] = bind_frame(frame, schema, model.kernel, model.param_output, source)
    elif kind == ".npz":
        with np.load(path, allow_pickle=False) as data:
            args = {name: data[name] for name in data.files}
    elif kind == ".npy":
        args = {model.param_input: np.load(path, mmap_mode="r", allow_pickle=False)}
    else:
        import zarr

        group = zarr.open_group(path, mode="r")
        args = {name: array for name, array in group.arrays()}
    observed = args.pop(model.param_output, None)
    if observed is None and frame is not None and model.param_output in frame.columns:
        observed = frame[model.param_output].to_numpy()
    args = with_static_defaults(args, schema)
    check_required(args, model.kernel, model.param_output, source)
    X = args[model.param_input]
    if len(np.shape(X)) == 0:
        raise ValueError(f"{source}: kernel argument {model.param_input!r} has no row axis.")
    n_rows = int(np.shape(X)[0])
    for arg in schema.rows if schema is not None else ():
        if arg.name not in args:
            continue
        shape = tuple(np.shape(args[arg.name]))
        if not shape or shape[1:] != tuple(arg.shape):
            raise ValueError(
                f"{source}: kernel argument {arg.name!r} has shape {shape}; the model was "
                f"fitted with one row of shape {tuple(arg.shape)} per row, so give "
                f"{(n_rows, *arg.shape)}."
            )
    if n_rows == 0:
        raise ValueError(f"{source} holds no rows (a header only?): give at least one row.")
    check_finite(args, n_rows, source)
    out = InputFile(args, frame)
    out.n_rows = n_rows
    out.observed = observed
    return out
