"""What loading a saved model runs: its kernel and its SVI or MCMC object, only when trusted.

:func:`~dopax.persist.saved.load_model` reads data only unless the caller opts in.
The kernel comes from the caller (``kernel=``), or, with ``trust_code=True``,
from the module the manifest names or the folder's ``kernel.py``; a pickle
needs ``allow_pickle=True``. The SVI or MCMC object is rebuilt from its
recorded settings through :func:`dopax.persist.allowed.is_allowed` unless the
caller trusts the folder.
"""

from __future__ import annotations

import types
from typing import Any

import dopax.persist.manifest as mf
from dopax._warn import warn
from dopax.exceptions import SavedModelError
from dopax.persist.allowed import is_allowed
from dopax.persist.files import Folder
from dopax.persist.inference import rebuild_inference
from dopax.persist.source import load_code, resolve_ref
from dopax.persist.values import UntrustedError

__all__ = ["TRUST_FIX", "SavedCode", "load_inference", "load_kernel"]


def _unpickle(folder: Folder, name: str) -> Any:
    try:
        import cloudpickle
    except ImportError as err:  # pragma: no cover - cloudpickle ships with the extras
        raise SavedModelError(f"Loading {folder}/{name} needs cloudpickle.") from err
    return cloudpickle.loads(folder.read_bytes(name))


TRUST_FIX = (
    "`trust_code=True` (`--trust-code` on the command line) if you trust this folder and "
    "where it came from"
)


def _uses_code(data: Any) -> bool:
    """Whether a recorded value names a definition of the code file."""
    if isinstance(data, list):
        return any(_uses_code(v) for v in data)
    if not isinstance(data, dict):
        return False
    if set(data) == {"code"} and isinstance(data["code"], str):
        return True
    return any(_uses_code(v) for v in data.values())


class SavedCode:
    """The folder's ``kernel.py``, run (once) only when asked for."""

    def __init__(self, folder: Folder) -> None:
        self.folder = folder
        self._module: types.ModuleType | None = None

    def module(self) -> types.ModuleType:
        """Run ``kernel.py`` (once) and return its module."""
        if self._module is None:
            if not self.folder.exists(mf.CODE):
                raise SavedModelError(
                    f"The model at {self.folder} needs its code file {mf.CODE}, which is "
                    "missing: restore the folder from where it came from, or pass the kernel "
                    "as `kernel=` and the SVI or MCMC object as `inference=`."
                )
            self._module = load_code(self.folder.read_text(mf.CODE), self.folder.url_of(mf.CODE))
        return self._module


def load_kernel(
    m: dict[str, Any], folder: Folder, code: SavedCode, trust_code: bool, allow_pickle: bool
) -> Any:
    """Return the saved kernel, if the caller allows what getting it runs.

    Raises:
        SavedModelError: Saying which opt-in (or ``kernel=``) it needs.
    """
    rec = m["kernel"]
    if rec["kind"] == "reference":
        if not trust_code:
            raise SavedModelError(
                f"The kernel of the model at {folder} is {rec['ref']!r} ({mf.MANIFEST}); "
                "loading it would import that module and run its code, which loading does "
                "only when asked. Pass the kernel function as `load_model(path, kernel=...)`, "
                f"or {TRUST_FIX}."
            )
        try:
            return resolve_ref(rec["ref"])
        except Exception as err:
            if rec.get("code") and folder.exists(mf.CODE):
                warn(
                    f"The kernel {rec['ref']!r} of the model at {folder} does not import here "
                    f"({type(err).__name__}: {err}); using the source saved with the model.",
                    UserWarning,
                )
                return getattr(code.module(), rec["code"])
            raise SavedModelError(
                f"The kernel of the model at {folder} is {rec['ref']!r}, which does not import "
                f"here ({type(err).__name__}: {err}). Put its module on the Python path, or pass "
                "the function as `load_model(path, kernel=...)`."
            ) from err
    if rec["kind"] == "code":
        if not trust_code:
            raise SavedModelError(
                f"The kernel of the model at {folder} is defined in "
                f"{folder.url_of(mf.CODE)}; loading it would run that file, which loading does "
                "only when asked. Pass the kernel function as `load_model(path, kernel=...)`, "
                f"or {TRUST_FIX}."
            )
        return getattr(code.module(), rec["name"])
    if not allow_pickle:
        raise SavedModelError(
            f"The kernel of the model at {folder} was saved with cloudpickle because "
            f"{rec['reason']}. Loading a pickle runs whatever code it holds: pass "
            "`allow_pickle=True` if you trust this folder, or pass the kernel function as "
            "`kernel=` (a function defined at module level is saved without pickle)."
        )
    return _unpickle(folder, mf.KERNEL_PICKLE)


def load_inference(
    m: dict[str, Any],
    folder: Folder,
    kernel: Any,
    code: SavedCode,
    trust_code: bool,
    allow_pickle: bool,
) -> Any:
    """Return a new SVI or MCMC object from the record, calling only what is allowed.

    Raises:
        SavedModelError: Naming the manifest entry that needs ``inference=``
            or ``trust_code=True``, or the record that cannot be rebuilt.
    """
    rec = m["inference"]
    if rec["kind"] == "pickle":
        if not allow_pickle:
            raise SavedModelError(
                f"The inference object of the model at {folder} was saved with cloudpickle "
                f"because {rec['reason']}. Pass `inference=` (a new SVI or MCMC object for the "
                "kernel), or `allow_pickle=True` if you trust this folder."
            )
        return _unpickle(folder, mf.INFERENCE_PICKLE)
    manifest = folder.url_of(mf.MANIFEST)
    try:
        if trust_code:
            module = code.module() if _uses_code(rec) else None
            return rebuild_inference(rec, kernel, module)
        return rebuild_inference(rec, kernel, None, allow=is_allowed)
    except UntrustedError as err:
        raise SavedModelError(
            f"{manifest}: `{err.where}` names {err.what}, which is not one of the NumPyro "
            "constructors a model is rebuilt from without running its own code. Pass the SVI "
            f"or MCMC object as `load_model(path, inference=...)`, or {TRUST_FIX}."
        ) from None
    except (ValueError, TypeError, KeyError, AttributeError, ImportError) as err:
        raise SavedModelError(
            f"{manifest}: the SVI or MCMC settings cannot be rebuilt ({type(err).__name__}: "
            f"{err}). Pass the SVI or MCMC object as `load_model(path, inference=...)`."
        ) from err
