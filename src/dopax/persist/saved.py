"""``save_model`` and ``load_model``: a fitted model as a folder of JSON, Zarr and source.

See :mod:`dopax.persist.manifest` for the folder's layout. Nothing is pickled
unless the kernel is a closure or a lambda, or the inference object cannot
be recorded by its settings; loading such a folder then needs
``allow_pickle=True`` (or the object itself, ``kernel=`` / ``inference=``).
Loading reads data only unless the caller passes ``trust_code=True``: the
kernel's module is imported, and the folder's ``kernel.py`` run, only then.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import dopax.persist.manifest as mf
from dopax._version import __version__
from dopax.exceptions import SavedModelError
from dopax.inference.posterior import Posterior
from dopax.model.impact_model import ImpactModel
from dopax.model.snapshot import (
    example_schema,
    fit_params,
    fit_state,
    restore_fit,
    restore_posterior,
    snapshot,
)
from dopax.persist.allowed import is_allowed
from dopax.persist.files import Folder
from dopax.persist.inference import describe_inference
from dopax.persist.loading import SavedCode, load_inference, load_kernel
from dopax.persist.source import CodeFile, NotRecordableError, importable_ref, load_code
from dopax.persist.state import array_records, read_arrays, write_arrays
from dopax.sampling.inputs import InputSchema
from dopax.sampling.row_latent import RowGuide

__all__ = ["load_model", "save_model"]


def _pickled(obj: Any, what: str, reason: str) -> bytes:
    try:
        import cloudpickle
    except ImportError as err:  # pragma: no cover - cloudpickle ships with the extras
        raise SavedModelError(
            f"The {what} can only be saved with cloudpickle ({reason}), which is not "
            "installed: `pip install cloudpickle`, or define it at module level."
        ) from err
    return bytes(cloudpickle.dumps(obj))


def _code_name(kernel: Any, code: CodeFile) -> str:
    """Add ``kernel`` to the code file, check the file runs, and return its name there.

    Raises:
        NotRecordableError: Saying why it cannot (nothing is added then).
    """
    before = code.checkpoint()
    try:
        name = code.add(kernel)
        loaded = getattr(load_code(code.text("dopax check"), "check"), name)
        if list(inspect.signature(loaded).parameters) != list(inspect.signature(kernel).parameters):
            raise NotRecordableError("its code file defines it with other arguments")
        return name
    except NotRecordableError:
        code.rollback(before)
        raise
    except Exception as err:
        code.rollback(before)
        what = f"its code file does not run ({type(err).__name__}: {err})"
        raise NotRecordableError(what) from err


def _kernel_record(kernel: Any, code: CodeFile) -> tuple[dict[str, Any], bytes | None]:
    ref = importable_ref(kernel)
    if ref is not None:
        # the source travels too, for places where the module does not import
        try:
            return {"kind": "reference", "ref": ref, "code": _code_name(kernel, code)}, None
        except NotRecordableError:
            return {"kind": "reference", "ref": ref, "code": None}, None
    try:
        return {"kind": "code", "name": _code_name(kernel, code)}, None
    except NotRecordableError as err:
        reason = str(err)
    return {"kind": "pickle", "reason": reason}, _pickled(kernel, "kernel", reason)


def _inference_record(
    inference: Any, kernel: Any, code: CodeFile
) -> tuple[dict[str, Any], bytes | None]:
    before = code.checkpoint()
    try:
        return describe_inference(inference, kernel, code), None
    except NotRecordableError as err:
        code.rollback(before)
        reason = str(err)
    return {"kind": "pickle", "reason": reason}, _pickled(inference, "inference object", reason)


def _example_schema(model: ImpactModel, example: Any) -> InputSchema:
    args = dict(example) if isinstance(example, Mapping) else {model.param_input: example}
    if model.param_input not in args:
        raise ValueError(f"`input_example` has no entry for the input {model.param_input!r}.")
    X = args.pop(model.param_input)
    args.pop(model.param_output, None)
    return example_schema(model, X, args)


def save_model(
    model: ImpactModel,
    path: str | os.PathLike[str],
    *,
    input_example: Any = None,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Save a model to a folder: JSON manifest, Zarr arrays and the kernel's source.

    The kernel is saved as an importable ``module:qualname`` reference when
    its module imports, and otherwise (a script, a notebook) as a code file
    of its source with the imports and constants it reads; a referenced
    kernel's source goes to the code file too, for loading where its module
    does not import. Only a closure or
    a lambda is pickled (cloudpickle); :func:`load_model` then asks for
    ``allow_pickle=True``. The SVI or MCMC object is saved as its classes and
    settings (guide, optimizer, ELBO; sampler and ``MCMC`` arguments); one
    that cannot be (optax optimizers, ``AutoGuideList``, custom guide
    classes) is pickled the same way. Arrays (posterior draws, the SVI
    optimizer state and parameters, losses) go to ``state.zarr``.

    Args:
        model: The model (fitted or not).
        path: A new or empty folder, as a local path or an fsspec URL.
        input_example: Kernel arguments (a dict, or the input array) whose
            schema to record instead of that of the last fitting call.
        overwrite: Replace a saved model already at ``path``.
        storage_options: fsspec options for URLs.

    Returns:
        The folder's path or URL.

    Raises:
        FileExistsError: If ``path`` is not empty (and not a saved model when
            ``overwrite`` is set).
    """
    if not isinstance(model, ImpactModel):
        raise TypeError(f"`model` must be an ImpactModel; got {type(model).__name__}.")
    folder = Folder(path, storage_options)
    if not folder.is_empty() and (not overwrite or not folder.exists(mf.MANIFEST)):
        hint = "." if overwrite else " (or pass `overwrite=True` to replace a saved model)."
        raise FileExistsError(f"{folder} is not empty; save to a new folder{hint}")
    state = snapshot(model)
    code = CodeFile()
    kernel_rec, kernel_pickle = _kernel_record(model.kernel, code)
    inference_rec, inference_pickle = _inference_record(model.inference, model.kernel, code)
    schema = state.inputs if input_example is None else _example_schema(model, input_example)
    arrays: dict[str, np.ndarray] = {}
    posterior = None
    if state.posterior is not None:
        names = list(state.posterior.draws)
        sites = {}
        for i, name in enumerate(names):
            value = np.asarray(state.posterior.draws[name])
            arrays[f"posterior/{i:04d}"] = value
            sites[name] = {"shape": list(value.shape[1:]), "dtype": value.dtype.name}
        posterior = {
            "sites": sites,
            "num_chains": state.posterior.num_chains,
            "num_draws": state.posterior.num_draws,
            # per-row sites a call draws from the guide's parameters (in the fit state)
            "row_guides": {k: g.to_json() for k, g in state.posterior.row_guides.items()},
            "row_words": None
            if state.posterior.row_words is None
            else [int(w) for w in np.asarray(state.posterior.row_words)],
        }
    fit_arrays, fit_facts = fit_state(model)
    # read now what a loaded model left in its folder: that may be this folder
    arrays.update({f"fit/{k}": np.asarray(v) for k, v in fit_arrays.items()})
    key = state.key
    manifest = {
        "format": mf.FORMAT,
        "format_version": mf.FORMAT_VERSION,
        "versions": mf.versions(),
        "created_at": str(np.datetime64("now", "s")),
        "param_input": model.param_input,
        "param_output": model.param_output,
        "kernel": kernel_rec,
        "inference": inference_rec,
        "kernel_spec": mf.spec_to_json(state.spec),
        "inputs": mf.schema_to_json(schema),
        "posterior": posterior,
        "fit": {"kind": state.fit_kind, **fit_facts},
        "rng": {
            "key_data": np.asarray(jax.random.key_data(key)).tolist(),
            "impl": str(jax.random.key_impl(key)),
            "counter": state.call_count,
        },
    }
    existed = folder.exists()
    if overwrite:
        folder.remove(keep_folder=True)
    folder.make()
    try:
        manifest["arrays"] = dict(sorted(write_arrays(folder, arrays).items()))
        if code:
            origins = ", ".join(sorted(code.origins)) or "an unnamed source"
            folder.write_text(mf.CODE, code.text(f"Saved by dopax {__version__} from {origins}."))
        if kernel_pickle is not None:
            folder.write_bytes(mf.KERNEL_PICKLE, kernel_pickle)
        if inference_pickle is not None:
            folder.write_bytes(mf.INFERENCE_PICKLE, inference_pickle)
        folder.write_text(mf.MANIFEST, json.dumps(manifest, indent=2))
    except BaseException:
        folder.remove(keep_folder=existed)
        raise
    return str(folder)


def load_model(
    path: str | os.PathLike[str],
    kernel: Any = None,
    *,
    inference: Any = None,
    trust_code: bool = False,
    allow_pickle: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> ImpactModel:
    """Load a model saved by :func:`save_model`.

    The loaded model predicts exactly as the saved one did: same posterior
    draws, kernel spec, key and call counter. An SVI model resumes from its
    saved optimizer state on its next ``fit``, ``fit_on_batch`` or
    ``train_on_batch`` (the guide is set up on that call's data first), and
    ``vi_result`` holds the saved parameters and losses. ``sample`` needs
    that set-up (SVI) or a new run of the sampler (MCMC).

    Loading reads data only, unless asked for more. The kernel is code: pass
    it as ``kernel=``, or let loading import the module the folder names, or
    run the folder's ``kernel.py``, with ``trust_code=True``. The SVI or MCMC
    object is rebuilt from its recorded settings when they name NumPyro's own
    guides, ELBOs, samplers, optimizers and schedules with plain values (see
    ``dopax.persist.allowed``); anything else the folder names (a function of
    ``kernel.py``, a custom guide, any other callable) needs ``inference=`` or
    ``trust_code=True``. With ``kernel=`` and ``inference=`` given, nothing the
    folder names runs. A pickle is loaded only with ``allow_pickle=True``.

    Args:
        path: The folder, as a local path or an fsspec URL.
        kernel: The kernel function to use instead of the saved one.
        inference: An SVI or MCMC object to use instead of the saved one.
        trust_code: Allow importing the kernel's module, running the folder's
            ``kernel.py`` and calling any function the manifest names. Only
            for folders you trust.
        allow_pickle: Allow loading a kernel or inference object that was
            saved with cloudpickle (the error says when this is needed); a
            pickle runs whatever code it holds.
        storage_options: fsspec options for URLs.

    Returns:
        The model, fitted as it was saved.

    Raises:
        SavedModelError: If the folder holds no saved model or a damaged one,
            the kernel does not import, or code or a pickle would have to run
            and is not allowed; the message names the file and the fix.
    """
    folder = Folder(path, storage_options)
    m = mf.read_manifest(folder)
    mf.check_versions(m["versions"], str(folder))
    code = SavedCode(folder)
    if kernel is None:
        kernel = load_kernel(m, folder, code, trust_code, allow_pickle)
    if inference is None:
        inference = load_inference(m, folder, kernel, code, trust_code, allow_pickle)
    inputs = mf.schema_from_json(m["inputs"], allow=None if trust_code else is_allowed)
    rng = m["rng"]
    try:
        key = jax.random.wrap_key_data(jnp.asarray(rng["key_data"], jnp.uint32), impl=rng["impl"])
    except (ValueError, TypeError) as err:
        raise SavedModelError(
            f"{folder.url_of(mf.MANIFEST)}: `rng` is not a key of {rng['impl']} ({err})."
        ) from err
    model = ImpactModel(
        kernel, key, inference, param_input=m["param_input"], param_output=m["param_output"]
    )
    # an SVI optimizer's state stays in the folder until a fit resumes (StoredArray)
    records = array_records(m, folder.url_of(mf.MANIFEST))
    arrays = read_arrays(folder, records, defer="fit/state/")
    spec = mf.spec_from_json(m["kernel_spec"])
    fit = {k[len("fit/") :]: v for k, v in arrays.items() if k.startswith("fit/")}
    same_driver = m["fit"].get("kind") == snapshot(model).fit_kind
    try:
        restore_fit(
            model,
            spec=spec,
            inputs=inputs,
            fit=(fit, m["fit"]) if same_driver else None,
        )
    except (KeyError, ValueError, TypeError, IndexError) as err:
        raise SavedModelError(
            f"{folder.url_of(mf.MANIFEST)}: the fit state it records does not match "
            f"{mf.STATE} ({type(err).__name__}: {err}). Restore the folder from where it "
            "came from, or save the model again."
        ) from err
    post = m["posterior"]
    posterior = None
    if post is not None:
        draws = {name: arrays[f"posterior/{i:04d}"] for i, name in enumerate(post["sites"])}
        # the posterior goes with the fit's point values (``numpyro.param`` sites)
        params = fit_params(model)
        rows = {k: RowGuide.from_json(v) for k, v in (post.get("row_guides") or {}).items()}
        missing = sorted(
            name
            for g in rows.values()
            for name in (g.loc, g.scale)
            if name is not None and name not in params
        )
        if missing:
            raise ValueError(
                f"The saved posterior draws per-row sites from the guide's parameters "
                f"{missing}, which the saved fit state lacks: the model was saved incompletely."
            )
        words = post.get("row_words")
        posterior = Posterior(
            draws,
            int(post["num_chains"]),
            params,
            row_guides=rows,
            n_draws=int(post["num_draws"]),
            row_words=None if words is None else np.asarray(words, np.uint32),
        )
    restore_posterior(model, posterior, int(rng["counter"]))
    return model
