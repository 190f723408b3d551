"""Checks on the kernel's signature and binding of call arguments to it."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from dopax.exceptions import KernelValidationError

__all__ = ["validate_signature", "check_reserved_kwargs"]


def validate_signature(kernel: Callable[..., Any], param_input: str, param_output: str) -> None:
    """Check that ``kernel`` can be driven by dopax.

    Args:
        kernel: The NumPyro model function.
        param_input: Name of the kernel's input argument.
        param_output: Name of the kernel's output argument.

    Raises:
        KernelValidationError: If the signature breaks a requirement; the
            message names the parameter and the fix.
    """
    if not callable(kernel):
        raise KernelValidationError(
            f"`kernel` must be a callable NumPyro model, got {type(kernel).__name__}."
        )
    if not isinstance(param_input, str) or not isinstance(param_output, str):
        raise KernelValidationError("`param_input` and `param_output` must be strings.")
    if param_input == param_output:
        raise KernelValidationError(
            f"`param_input` and `param_output` must differ; both are {param_input!r}."
        )
    try:
        params = inspect.signature(kernel).parameters
    except (TypeError, ValueError) as err:
        raise KernelValidationError(f"Cannot read the signature of `kernel`: {err}") from err
    for p in params.values():
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            raise KernelValidationError(
                f"Kernel must not take variable positional arguments (*{p.name}); "
                "declare every argument by name."
            )
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            raise KernelValidationError(
                f"Kernel must not take variable keyword arguments (**{p.name}); "
                "declare every argument by name."
            )
        if p.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise KernelValidationError(
                f"Kernel argument {p.name!r} is positional-only; dopax passes arguments by name."
            )
    missing = [name for name in (param_input, param_output) if name not in params]
    if missing:
        raise KernelValidationError(
            f"Kernel must accept {param_input!r} and {param_output!r} as argument(s). "
            "Modify the kernel signature or set `param_input` and `param_output` accordingly."
        )
    if params[param_input].default is not inspect.Parameter.empty:
        raise KernelValidationError(
            f"Kernel argument {param_input!r} (`param_input`) must not have a default value; "
            f"remove the default from {param_input!r}."
        )
    if params[param_output].default is not None:
        raise KernelValidationError(
            f"Kernel argument {param_output!r} (`param_output`) must default to None, "
            f"e.g. `def kernel({param_input}, {param_output}=None): ...`."
        )


def kernel_parameters(kernel: Callable[..., Any]) -> tuple[str, ...]:
    """Return the names of the kernel's parameters, in order.

    Args:
        kernel: The NumPyro model function.
    """
    return tuple(inspect.signature(kernel).parameters)


def check_reserved_kwargs(
    kwargs: Mapping[str, Any],
    kernel: Callable[..., Any],
    param_input: str,
    param_output: str,
) -> None:
    """Reject keyword arguments that collide with the input/output or that the kernel lacks.

    Args:
        kwargs: The extra keyword arguments of a dopax call.
        kernel: The NumPyro model function.
        param_input: Name of the kernel's input argument.
        param_output: Name of the kernel's output argument.

    Raises:
        TypeError: If ``kwargs`` names the input or output argument, or an
            argument the kernel does not take.
    """
    for name in (param_input, param_output):
        if name in kwargs:
            raise TypeError(
                f"{name!r} is the kernel's {'input' if name == param_input else 'output'} "
                "argument; pass it positionally (as `X` / `y`), not through **kwargs."
            )
    known = set(kernel_parameters(kernel))
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(
            f"Unknown keyword argument(s) {unknown} for the kernel; "
            f"it accepts {sorted(known - {param_input, param_output})}."
        )
