"""The manifest of a saved model: one JSON document that says what the folder holds.

Layout of a saved model folder::

    dopax_model.json   this manifest, written last (a folder without it is not a model)
    state.zarr/        posterior draws and the fit state, as plain arrays
    kernel.py          the kernel's source (the kernel of a script; a copy for a reference)
    kernel.pkl         cloudpickle of the kernel, only when nothing else can hold it
    inference.pkl      cloudpickle of the SVI/MCMC object, only when it cannot be recorded

Manifest keys: ``format`` and ``format_version``; ``versions`` (dopax, jax,
numpyro, python at saving); ``created_at``; ``param_input`` and
``param_output``; ``kernel`` (``kind`` ``"reference"`` with ``ref`` and
``code``, the name of its copy in the code file or ``null``; ``"code"``
with ``name``; or ``"pickle"`` with ``reason``); ``inference``
(``kind`` ``"svi"`` or ``"mcmc"`` with the recorded objects, or ``"pickle"``
with ``reason``); ``kernel_spec``; ``inputs`` (the input schema: per-row
arguments with dtype and trailing shape, arrays passed whole, static values);
``posterior`` (site names, shapes and dtypes, number of chains and draws);
``fit`` (the fit driver's facts, e.g. guide parameter names); ``rng`` (the
model's key and call counter); ``arrays`` (the name of every array in
``state.zarr``).
"""

from __future__ import annotations

import json
import platform
from typing import Any

import jax
import numpyro

from dopax._version import __version__
from dopax._warn import warn
from dopax.exceptions import SavedModelError
from dopax.io.files import Folder
from dopax.io.source import NotRecordableError
from dopax.io.values import decode, encode
from dopax.kernel.spec import KernelSpec
from dopax.sampling.inputs import ArgSchema, InputSchema

__all__ = [
    "CODE",
    "FORMAT",
    "INFERENCE_PICKLE",
    "KERNEL_PICKLE",
    "MANIFEST",
    "STATE",
    "check_versions",
    "read_manifest",
    "schema_from_json",
    "schema_to_json",
    "spec_from_json",
    "spec_to_json",
    "versions",
]

FORMAT = "dopax-model"
FORMAT_VERSION = 1
MANIFEST = "dopax_model.json"
STATE = "state.zarr"
CODE = "kernel.py"
KERNEL_PICKLE = "kernel.pkl"
INFERENCE_PICKLE = "inference.pkl"


def versions() -> dict[str, str]:
    """Return the versions a saved model records."""
    return {
        "dopax": __version__,
        "jax": jax.__version__,
        "numpyro": numpyro.__version__,
        "python": platform.python_version(),
    }


def check_versions(saved: dict[str, str], where: str) -> None:
    """Warn when dopax, jax or numpyro differ from the versions a model was saved with.

    Args:
        saved: The manifest's ``versions``.
        where: The folder, for the message.
    """
    now = versions()
    differ = [k for k in ("dopax", "jax", "numpyro") if saved.get(k) != now[k]]
    if differ:
        then_text = ", ".join(f"{k} {saved.get(k)}" for k in differ)
        now_text = ", ".join(f"{k} {now[k]}" for k in differ)
        warn(
            f"The model at {where} was saved with {then_text} and is loaded with {now_text}; "
            "its predictions may differ from those of the saving environment.",
            UserWarning,
        )


def read_manifest(folder: Folder) -> dict[str, Any]:
    """Return the manifest of a saved model folder.

    Raises:
        SavedModelError: If the folder holds no saved model or a newer format.
    """
    if not folder.exists(MANIFEST):
        what = "does not exist" if not folder.exists() else f"has no {MANIFEST}"
        raise SavedModelError(
            f"No saved dopax model at {folder}: the folder {what} (save one with "
            "`dopax.save_model(model, path)`)."
        )
    data = json.loads(folder.read_text(MANIFEST))
    if data.get("format") != FORMAT:
        raise SavedModelError(f"{folder}/{MANIFEST} is not a dopax model manifest.")
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise SavedModelError(
            f"The model at {folder} uses saved-model format {data['format_version']}; this "
            f"dopax reads format {FORMAT_VERSION} and older. Upgrade dopax."
        )
    return data


def spec_to_json(spec: KernelSpec | None) -> dict[str, Any] | None:
    """Return a kernel spec as JSON-ready data."""
    if spec is None:
        return None
    return {
        "sample_sites": list(spec.sample_sites),
        "return_sites": list(spec.return_sites),
        "output_observed": spec.output_observed,
        "param_sites": list(spec.param_sites),
    }


def spec_from_json(data: dict[str, Any] | None) -> KernelSpec | None:
    """Read a kernel spec written by :func:`spec_to_json`."""
    if data is None:
        return None
    return KernelSpec(
        tuple(data["sample_sites"]),
        tuple(data["return_sites"]),
        bool(data["output_observed"]),
        tuple(data.get("param_sites", ())),
    )


def schema_to_json(schema: InputSchema | None) -> dict[str, Any] | None:
    """Return an input schema as JSON-ready data (static values JSON cannot hold are left out)."""
    if schema is None:
        return None
    static = {}
    for name, value in schema.static:
        try:
            static[name] = encode(value)
        except NotRecordableError:
            continue
    return {
        "rows": [a.to_json() for a in schema.rows],
        "shared": [a.to_json() for a in schema.shared],
        "static": static,
    }


def schema_from_json(data: dict[str, Any] | None) -> InputSchema | None:
    """Read an input schema written by :func:`schema_to_json`."""
    if data is None:
        return None
    return InputSchema(
        tuple(ArgSchema.from_json(a) for a in data["rows"]),
        tuple(ArgSchema.from_json(a) for a in data["shared"]),
        tuple(sorted((k, decode(v)) for k, v in data["static"].items())),
    )
