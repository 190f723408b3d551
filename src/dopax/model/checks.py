"""Argument checks of the public methods, each naming the argument and the fix."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["positive_int", "optional_positive_int"]


def positive_int(value: Any, name: str) -> int:
    """Return ``value`` as an ``int`` if it is a positive integer, else raise.

    Args:
        value: The argument.
        name: Its name.
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
    return int(value)


def optional_positive_int(value: Any, name: str) -> int | None:
    """Return ``None`` or ``value`` checked by :func:`positive_int`.

    Args:
        value: The argument.
        name: Its name.
    """
    return None if value is None else positive_int(value, name)
