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
model's key and call counter); ``arrays`` (every array of ``state.zarr``
with its ``shape``, ``dtype`` and ``chunks``; format 1 listed the names only).
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Callable
from typing import Any

import jax
import numpyro

from dopax._version import __version__
from dopax._warn import warn
from dopax.exceptions import SavedModelError
from dopax.kernel.spec import KernelSpec
from dopax.persist.files import Folder
from dopax.persist.source import NotRecordableError
from dopax.persist.values import UntrustedError, decode, encode
from dopax.sampling.inputs import ArgSchema, InputSchema

__all__ = [
    "CODE",
    "FORMAT",
    "INFERENCE_PICKLE",
    "KERNEL_PICKLE",
    "MANIFEST",
    "STATE",
    "check_manifest",
    "check_versions",
    "parse_manifest",
    "read_manifest",
    "schema_from_json",
    "schema_to_json",
    "spec_from_json",
    "spec_to_json",
    "versions",
]

FORMAT = "dopax-model"
#: 2: arrays stored with checksums and recorded with shape, dtype and chunks.
FORMAT_VERSION = 2
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


#: Largest manifest read (bytes): a manifest holds settings, never data.
MAX_MANIFEST_BYTES = 64 * 2**20
#: Most elements one row of a per-row argument may hold (columns of a table).
MAX_ROW_ELEMENTS = 2**24
#: Dtypes of the arguments and posterior sites a manifest may name.
DTYPES = frozenset(
    {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
    | {"float16", "float32", "float64"}
)
#: PRNG implementations a manifest may name.
KEY_IMPLS = frozenset({"threefry2x32", "rbg", "unsafe_rbg"})


def read_manifest(folder: Folder) -> dict[str, Any]:
    """Return the manifest of a saved model folder, checked by :func:`check_manifest`.

    Raises:
        SavedModelError: If the folder holds no saved model, a newer format,
            or a manifest that is not valid JSON or not of the expected form;
            the message names the file.
    """
    if not folder.exists(MANIFEST):
        what = "does not exist" if not folder.exists() else f"has no {MANIFEST}"
        raise SavedModelError(
            f"No saved dopax model at {folder}: the folder {what} (save one with "
            "`dopax.save_model(model, path)`)."
        )
    where = folder.url_of(MANIFEST)
    size = int(folder.fs.size(folder.path(MANIFEST)) or 0)
    if size > MAX_MANIFEST_BYTES:
        raise SavedModelError(
            f"{where} holds {size} bytes, more than a manifest of settings ever does: it is "
            "not a dopax manifest, or it was damaged."
        )
    return parse_manifest(folder.read_bytes(MANIFEST), where)


def parse_manifest(raw: bytes, where: str) -> dict[str, Any]:
    """Return a manifest from its bytes, checked by :func:`check_manifest`.

    Args:
        raw: The file's bytes.
        where: The file's path, for messages.

    Raises:
        SavedModelError: Naming ``where`` and what is wrong.
    """
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise SavedModelError(
            f"{where} is not valid JSON ({err}): the file was damaged or cut short. Restore "
            "the folder from where it came from, or save the model again."
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SavedModelError(f"{where} is not a dopax model manifest.")
    version = data.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SavedModelError(f"{where}: `format_version` must be a positive integer.")
    if version > FORMAT_VERSION:
        raise SavedModelError(
            f"The model of {where} uses saved-model format {version}; this dopax reads "
            f"format {FORMAT_VERSION} and older. Upgrade dopax."
        )
    check_manifest(data, where)
    return data


def _fail(where: str, key: str, what: str) -> SavedModelError:
    return SavedModelError(
        f"{where}: `{key}` {what}. The manifest was damaged or edited; restore the folder "
        "from where it came from, or save the model again."
    )


def _is_int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _shape(value: Any, where: str, key: str) -> list[int]:
    if not isinstance(value, list) or len(value) > 32 or not all(_is_int(n) for n in value):
        raise _fail(where, key, f"must be a list of non-negative integers; got {value!r:.80}")
    if math.prod(value) >= 2**62:
        raise _fail(where, key, f"has {math.prod(value)} elements")
    return value


def _names(value: Any, where: str, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise _fail(where, key, "must be a list of names")
    return value


def _args(value: Any, where: str, key: str, per_row: bool) -> None:
    if not isinstance(value, list):
        raise _fail(where, key, "must be a list of arguments")
    for i, arg in enumerate(value):
        at = f"{key}[{i}]"
        if not isinstance(arg, dict) or not isinstance(arg.get("name"), str):
            raise _fail(where, at, "must name an argument")
        if not arg["name"].isidentifier():
            raise _fail(where, f"{at}.name", f"{arg['name']!r:.80} is not an argument name")
        if arg.get("dtype") not in DTYPES:
            raise _fail(where, f"{at}.dtype", f"must be one of {sorted(DTYPES)}")
        shape = _shape(arg.get("shape"), where, f"{at}.shape")
        if per_row and math.prod(shape) > MAX_ROW_ELEMENTS:
            raise _fail(
                where,
                f"{at}.shape",
                f"gives {math.prod(shape)} values per row, more than the {MAX_ROW_ELEMENTS} "
                "a row may hold",
            )


def check_manifest(m: dict[str, Any], where: str) -> None:
    """Check the types and shapes of a manifest's entries and that they agree with each other.

    Nothing is imported, read or allocated: only the manifest's own values
    are looked at (the arrays are checked against ``state.zarr`` by
    :func:`dopax.persist.state.read_arrays`).

    Args:
        m: The manifest.
        where: Its path, for messages.

    Raises:
        SavedModelError: Naming the file, the entry and what is wrong.
    """
    versions = m.get("versions")
    if not isinstance(versions, dict) or not all(isinstance(v, str) for v in versions.values()):
        raise _fail(where, "versions", "must map package names to versions")
    for key in ("param_input", "param_output"):
        if not isinstance(m.get(key), str) or not m[key].isidentifier():
            raise _fail(where, key, "must be an argument name")
    kernel = m.get("kernel")
    if not isinstance(kernel, dict):
        raise _fail(where, "kernel", "must be a reference, a code file entry or a pickle")
    kind = kernel.get("kind")
    fields = {"reference": ("ref",), "code": ("name",), "pickle": ("reason",)}.get(str(kind))
    if fields is None or not all(isinstance(kernel.get(f), str) for f in fields):
        raise _fail(where, "kernel", "must be a reference, a code file entry or a pickle")
    if kind == "reference" and not (kernel.get("code") is None or isinstance(kernel["code"], str)):
        raise _fail(where, "kernel.code", "must be a name or null")
    inference = m.get("inference")
    if not isinstance(inference, dict) or inference.get("kind") not in ("svi", "mcmc", "pickle"):
        raise _fail(where, "inference", "must be a recorded SVI or MCMC object, or a pickle")
    spec = m.get("kernel_spec")
    if spec is not None:
        if not isinstance(spec, dict) or not isinstance(spec.get("output_observed"), bool):
            raise _fail(where, "kernel_spec", "must hold the sites and `output_observed`")
        _names(spec.get("sample_sites"), where, "kernel_spec.sample_sites")
        _names(spec.get("return_sites"), where, "kernel_spec.return_sites")
        _names(spec.get("param_sites", []), where, "kernel_spec.param_sites")
    inputs = m.get("inputs")
    if inputs is not None:
        if not isinstance(inputs, dict) or not isinstance(inputs.get("static"), dict):
            raise _fail(where, "inputs", "must hold `rows`, `shared` and `static`")
        _args(inputs.get("rows"), where, "inputs.rows", per_row=True)
        _args(inputs.get("shared"), where, "inputs.shared", per_row=False)
    _check_posterior(m, where)
    fit = m.get("fit")
    if not isinstance(fit, dict) or not isinstance(fit.get("kind"), str):
        raise _fail(where, "fit", "must name the kind of fit")
    rng = m.get("rng")
    if not isinstance(rng, dict):
        raise _fail(where, "rng", "must hold the model's key")
    key_data = rng.get("key_data")
    if (
        not isinstance(key_data, list)
        or not 1 <= len(key_data) <= 16
        or not all(_is_int(k) and k < 2**32 for k in key_data)
    ):
        raise _fail(where, "rng.key_data", "must be a list of 32-bit unsigned integers")
    if rng.get("impl") not in KEY_IMPLS:
        raise _fail(where, "rng.impl", f"must be one of {sorted(KEY_IMPLS)}")
    if not _is_int(rng.get("counter")):
        raise _fail(where, "rng.counter", "must be a non-negative integer")


def _check_posterior(m: dict[str, Any], where: str) -> None:
    post = m.get("posterior")
    if post is None:
        return
    if not isinstance(post, dict) or not isinstance(post.get("sites"), dict):
        raise _fail(where, "posterior", "must hold `sites`, `num_chains` and `num_draws`")
    chains: Any = post.get("num_chains")
    draws: Any = post.get("num_draws")
    if not (_is_int(chains, 1) and _is_int(draws)) or draws % chains:
        raise _fail(
            where,
            "posterior",
            "needs a positive `num_chains` dividing a non-negative `num_draws`",
        )
    arrays = m.get("arrays")
    records = arrays if isinstance(arrays, dict) else None
    for i, (name, site) in enumerate(post["sites"].items()):
        at = f"posterior.sites.{name}"
        if not isinstance(site, dict) or site.get("dtype") not in DTYPES:
            raise _fail(where, at, f"needs a `shape` and a `dtype` of {sorted(DTYPES)}")
        shape = _shape(site.get("shape"), where, f"{at}.shape")
        array = f"posterior/{i:04d}"
        if isinstance(arrays, list) and array not in arrays:
            raise _fail(where, "arrays", f"does not list {array!r}, the draws of {name!r}")
        if records is not None:
            rec = records.get(array)
            expected = {"shape": [draws, *shape], "dtype": site["dtype"]}
            if not isinstance(rec, dict) or {k: rec.get(k) for k in expected} != expected:
                raise _fail(
                    where,
                    f"arrays.{array}",
                    f"must record the draws of {name!r}: shape {expected['shape']}, dtype "
                    f"{site['dtype']}",
                )


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


def schema_from_json(
    data: dict[str, Any] | None, allow: Callable[[str], bool] | None = None
) -> InputSchema | None:
    """Read an input schema written by :func:`schema_to_json`.

    A static value naming a function ``allow`` refuses is left out with a
    warning: calls then need that argument passed to them.

    Args:
        data: The manifest's ``inputs``.
        allow: Which references a static value may name (``None``: any; see
            :func:`dopax.persist.values.decode`).
    """
    if data is None:
        return None
    static = {}
    for name, value in data["static"].items():
        try:
            static[name] = decode(value, allow=allow, where=f"inputs.static.{name}")
        except UntrustedError as err:
            warn(
                f"The static argument {name!r} of the saved model names {err.what}, which "
                "loading calls only with `trust_code=True`; it is left out, so pass it to "
                "each call.",
                UserWarning,
            )
    return InputSchema(
        tuple(ArgSchema.from_json(a) for a in data["rows"]),
        tuple(ArgSchema.from_json(a) for a in data["shared"]),
        tuple(sorted(static.items())),
    )
