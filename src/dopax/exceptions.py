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
    "ScenarioError",
    "StreamingError",
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
    """Raised when a persisted result is opened but was never completed or has been deleted."""


class FitDivergedError(DopaxError, RuntimeError):
    """Raised when a fit diverged: its loss and the guide's parameters are no longer finite.

    The message names the step at which the loss first stopped being finite
    and how to steady the fit; the model keeps the fit state it had before.
    """


class InputError(DopaxError, ValueError):
    """Raised when a call's data do not fit the kernel or the fitted model.

    The message names the argument, the shape expected and the fix.
    """
