"""Errors about the user's data: which argument, the shape expected, the fix.

When the kernel fails on a call's inputs, :func:`explain` looks for the
argument to blame by comparing the call's inputs with those the model was
fitted on (their :class:`InputSchema`) and with the number of rows, and
returns an :class:`~dopax.exceptions.InputError` that names it; with nothing
to blame, the kernel's own error stands.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from dopax.exceptions import InputError

__all__ = ["InputSchema", "explain", "check_observed_shape"]

#: Words of the shape errors of JAX, NumPy and NumPyro.
_SHAPE_WORDS = ("shape", "broadcast", "dimension", "incompatible", "size", "out of range")


@dataclasses.dataclass(frozen=True)
class InputSchema:
    """The shapes of a fit's array inputs.

    Attributes:
        rows: Per-row argument to its shape after the row axis.
        shared: Argument passed whole to its full shape.
    """

    rows: Mapping[str, tuple[int, ...]]
    shared: Mapping[str, tuple[int, ...]]

    @classmethod
    def of(cls, rows: Mapping[str, Any], shared: Mapping[str, Any]) -> InputSchema:
        """Return the schema of bound inputs (``BoundArgs.rows`` and ``.shared``)."""
        return cls(
            {k: tuple(np.shape(v)[1:]) for k, v in rows.items()},
            {k: tuple(np.shape(v)) for k, v in shared.items()},
        )


def _hints(
    rows: Mapping[str, Any],
    shared: Mapping[str, Any],
    n_rows: int,
    fitted: InputSchema | None,
    shape_error: bool,
) -> list[str]:
    hints = []
    for name, value in rows.items():
        if fitted is None or name not in fitted.rows:
            continue
        rest = tuple(np.shape(value)[1:])
        if rest != fitted.rows[name]:
            want = (n_rows, *fitted.rows[name])
            hints.append(
                f"`{name}` has shape {tuple(np.shape(value))}, but the model was fitted with "
                f"`{name}` of shape (rows, {', '.join(map(str, fitted.rows[name]))}); pass "
                f"`{name}` with shape {want}."
            )
    for name, value in shared.items():
        shape = tuple(np.shape(value))
        if fitted is not None and name in fitted.rows:
            want = (n_rows, *fitted.rows[name])
            hints.append(
                f"`{name}` has shape {shape}, but it had one entry per row when the model was "
                f"fitted and this call has {n_rows} rows; pass `{name}` with shape {want}."
            )
        elif fitted is not None and name in fitted.shared and fitted.shared[name] != shape:
            hints.append(
                f"`{name}` has shape {shape}, but the model was fitted with `{name}` of shape "
                f"{fitted.shared[name]}; pass `{name}` with shape {fitted.shared[name]}."
            )
        elif shape_error and fitted is None and len(shape) >= 1 and shape[0] != n_rows:
            hints.append(
                f"`{name}` has shape {shape}: its first axis differs from the {n_rows} rows of "
                f"the input, so it is passed whole rather than split with the rows. If it holds "
                f"one value per row, pass `{name}` with shape {(n_rows, *shape[1:])}."
            )
    return hints


def explain(
    err: BaseException,
    rows: Mapping[str, Any],
    shared: Mapping[str, Any],
    n_rows: int,
    fitted: InputSchema | None,
) -> BaseException:
    """Return an :class:`InputError` naming the input to blame for ``err``, or ``err``.

    Args:
        err: What the kernel raised on the call's inputs.
        rows: The call's per-row inputs.
        shared: The call's inputs passed whole.
        n_rows: The call's number of rows.
        fitted: The shapes of the fit's inputs, if the model was fitted.
    """
    if isinstance(err, InputError | KeyError) or not isinstance(err, Exception):
        return err
    text = str(err).lower()
    shape_error = isinstance(err, TypeError | ValueError | IndexError) and any(
        word in text for word in _SHAPE_WORDS
    )
    hints = _hints(rows, shared, n_rows, fitted, shape_error)
    if not hints:
        return err
    return InputError(
        " ".join(hints) + f" (The kernel raised {type(err).__name__}: {str(err).strip()})"
    )


def check_observed_shape(
    traced: Mapping[str, Mapping[str, Any]], name: str, value: Any, n_rows: int
) -> None:
    """Check that an observed output has the shape of its site, so NumPyro will not broadcast it.

    Args:
        traced: The kernel's sites on the call's first rows (:func:`probe_sites`).
        name: The output site (and argument) name.
        value: The observed output of the call.
        n_rows: The call's number of rows.

    Raises:
        InputError: If the site's distribution has another shape than the
            observed value, e.g. ``y`` of shape ``(n, 1)`` for a site of shape
            ``(n,)``, which would be broadcast to ``(n, n)``.
    """
    site = traced.get(name)
    if site is None or "fn_shape" not in site or "shape" not in site:
        return
    fn_shape, seen = tuple(site["fn_shape"]), tuple(site["shape"])
    try:
        ok = np.broadcast_shapes(seen, fn_shape) == seen
    except ValueError:
        ok = False
    if ok:
        return
    probe_rows = seen[0] if seen else 0
    want = (n_rows, *fn_shape[1:]) if fn_shape and fn_shape[0] == probe_rows else fn_shape
    dims = ", ".join(map(str, want))
    raise InputError(
        f"`{name}` has shape {tuple(np.shape(value))}, but the kernel's site {name!r} has "
        f"shape {want} for these rows, and NumPyro would broadcast the two against each "
        f"other. Pass `{name}` with shape {want} (e.g. `{name}.reshape({dims})`)."
    )
