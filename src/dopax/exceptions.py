"""Public error types raised by dopax.

Every error dopax raises on purpose is one of these (or a built-in such as
``TypeError`` for a wrong argument type), so callers can catch them precisely.
"""

from __future__ import annotations

__all__ = [
    "DopaxError",
    "FitDivergedError",
    "IncompleteResultError",
    "InputError",
    "KernelValidationError",
    "NotFittedError",
    "SavedModelError",
    "ScenarioError",
    "StreamingError",
    "TraceCorruptError",
    "TraceMismatchError",
]


class DopaxError(Exception):
    """Base class of every dopax-specific error."""


class NotFittedError(DopaxError, ValueError, AttributeError):
    """Raised when a method needs posterior draws or a fitted state that the model lacks.

    The message names the call to make first (``fit``, ``fit_on_batch`` or
    ``set_posterior_sample``).
    """


class KernelValidationError(DopaxError, ValueError):
    """Raised when the kernel's signature or body breaks a dopax requirement."""


class ScenarioError(DopaxError, ValueError):
    """Raised when an intervention or scenario specification is invalid."""


class StreamingError(DopaxError, RuntimeError):
    """Raised when a streamed call fails for a reason other than the user's own code."""


class IncompleteResultError(DopaxError, OSError):
    """Raised when a persisted result was never completed, has been deleted, or is damaged.

    Damaged: a chunk is missing, or its bytes do not match their checksum; the
    message names the chunk.
    """


class TraceMismatchError(DopaxError, ValueError):
    """Raised when a run would resume a trace written with other data, kernel or settings.

    The message names what differs. The trace is left as it was.
    """


class TraceCorruptError(DopaxError, OSError):
    """Raised when a trace's stored bytes are missing or damaged.

    A chunk whose file is gone or whose checksum does not match, or a sampler
    state (``_sampling_state``) that is incomplete or is not the one the
    trace's progress marker recorded. The message names the file and what to
    do (restore the trace from a copy, or sample again into a new trace). A
    run refuses to resume from such a trace and leaves it as it was.
    """


class SavedModelError(DopaxError, ValueError):
    """Raised when a saved model cannot be written or loaded as asked.

    The message names the file and says why: the folder holds no saved model
    or a damaged one, the kernel's module does not import, loading would run
    code the caller has not trusted (``kernel=``, ``inference=`` or
    ``trust_code=True`` fix that), or the kernel could only be saved with a
    pickle (then ``load_model(..., allow_pickle=True)`` loads it).
    """


class FitDivergedError(DopaxError, RuntimeError):
    """Raised when a fit diverged: its loss and the guide's parameters are no longer finite.

    The message names the step at which the loss first stopped being finite
    and how to steady the fit; the model keeps the fit state it had before.
    """


class InputError(DopaxError, ValueError):
    """Raised when a call's data do not fit the kernel or the fitted model.

    The message names the argument, the shape expected and the fix.
    """
