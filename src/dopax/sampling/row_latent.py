"""Per-row latent sites in a block: each block carries its own rows' values.

A *per-row latent* site is a latent sample site with a row axis (a site
inside the row plate without ``obs``). In-sample calls substitute the
posterior's values of such sites, and a block needs only its own rows'
values. Those come from one of two sources:

* Draws (:data:`DRAWS`): an array ``(draws, *site_shape)`` in memory or in a
  trace's Zarr store; a block reads its draws by its rows
  (:func:`block_draws`).
* A guide that factorises over rows (:data:`NORMAL` for ``AutoNormal``,
  :data:`DELTA` for ``AutoDelta``): the guide's per-row parameters are
  sliced by rows (:func:`block_params`) and each draw's values are drawn in
  the block program, with random numbers addressed by (the posterior's row
  key, draw, site, global row), so a row's values do not depend on the
  block it falls in, and every call sees the same values, as if they were
  stored draws.

Inside the program, values travel with the block's rows on their leading
axis (``(D, R, *rest)`` for draws, ``(R, *rest)`` for parameters) whatever
the site's own row axis, so a device split of the rows is a split of that
leading axis; :func:`substitute_fn` puts each value back in the site's own
layout when the kernel reaches the site (inside a ``scan`` too: NumPyro
hands a scanned site its step of the series).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions.transforms import biject_to

from dopax.sampling.row_keys import _TAG_GUIDE, ROW_KEY_IMPL
from dopax.sampling.threefry import threefry2x32

__all__ = [
    "COUPLED",
    "DELTA",
    "DRAWS",
    "NORMAL",
    "RowGuide",
    "RowLatentSpec",
    "block_draws",
    "block_params",
    "guide_draw_words",
    "guide_param_names",
    "substitute_fn",
]

#: Values of the site's posterior draws.
DRAWS = "draws"
#: Drawn from a normal guide in unconstrained space (``AutoNormal``).
NORMAL = "normal"
#: The point value of a delta guide (``AutoDelta``).
DELTA = "delta"
#: A guide that couples the rows of the site (its draws are stored whole).
COUPLED = "coupled"


@dataclasses.dataclass(frozen=True)
class RowLatentSpec:
    """How a block program gets one per-row latent site (hashable: it keys compilation).

    Attributes:
        name: Site name.
        row_axis: Axis of the site's own shape that indexes rows.
        kind: :data:`DRAWS`, :data:`NORMAL` or :data:`DELTA`.
    """

    name: str
    row_axis: int
    kind: str


@dataclasses.dataclass(frozen=True)
class RowGuide:
    """How a fitted guide gives one per-row site.

    Attributes:
        kind: :data:`NORMAL` or :data:`DELTA` (drawn per block from the
            parameters), or :data:`COUPLED` (the guide ties the site's rows
            together; its draws are stored with the posterior).
        guide: Class name of the guide (or part of a guide list) that holds
            the site.
        loc: Name of the parameter with the site's location (unconstrained
            for ``NORMAL``, constrained for ``DELTA``), or ``None``.
        scale: Name of the parameter with the site's scale (``NORMAL``), or ``None``.
    """

    kind: str
    guide: str
    loc: str | None = None
    scale: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the record as plain JSON values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> RowGuide:
        """Return the record written by :meth:`to_json`."""
        return cls(
            kind=str(record["kind"]),
            guide=str(record["guide"]),
            loc=None if record.get("loc") is None else str(record["loc"]),
            scale=None if record.get("scale") is None else str(record["scale"]),
        )

    def arrays(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Return the guide's parameters of the site, by role (``loc``, ``scale``)."""
        out = {}
        if self.loc is not None:
            out["loc"] = params[self.loc]
        if self.scale is not None:
            out["scale"] = params[self.scale]
        return out


def guide_param_names(kind: str, site: str, prefix: str) -> tuple[str | None, str | None]:
    """Return the names of an automatic guide's location and scale parameters of ``site``.

    Args:
        kind: :data:`NORMAL` or :data:`DELTA`.
        site: Site name.
        prefix: The guide's parameter prefix (``"auto"`` by default).
    """
    loc = f"{site}_{prefix}_loc"
    return loc, (f"{site}_{prefix}_scale" if kind == NORMAL else None)


def _pad(value: np.ndarray, axis: int, size: int) -> np.ndarray:
    n = value.shape[axis]
    if n == size:
        return value
    last = np.take(value, [n - 1], axis=axis)
    return np.concatenate([value, np.repeat(last, size - n, axis=axis)], axis=axis)


def rows_of(value: Any, axis: int, rows: Any) -> np.ndarray:
    """Return ``value`` at ``rows`` (a slice or index array) along ``axis``, in memory.

    Stored draws (:class:`~dopax.inference.posterior.ChainMajorDraws`) read
    only those rows' chunks.

    Args:
        value: An array or stored draws.
        axis: The axis to index.
        rows: A slice or an integer index array.
    """
    index = (slice(None),) * axis + (rows,)
    return np.asarray(value[index])


def block_draws(
    values: Any,
    row_axis: int,
    d0: int,
    d1: int,
    rows: Any,
    pad_d: int,
    pad_r: int,
    window_bytes: int,
) -> np.ndarray:
    """Return draws ``d0:d1`` of a per-row site at ``rows``, rows leading after draws.

    Args:
        values: The site's draws, ``(draws, *site_shape)``: an array or
            stored draws (read block by block).
        row_axis: The site's row axis (within its own shape).
        d0: First draw.
        d1: One past the last draw.
        rows: The block's rows: a slice or an index array.
        pad_d: Draws to pad to (repeating the last one).
        pad_r: Rows to pad to (repeating the last one).
        window_bytes: The read window of stored draws.

    Returns:
        An array ``(pad_d, pad_r, *rest)``.
    """
    if hasattr(values, "block"):
        block = values.block(d0, d1, 1 + row_axis, rows, window_bytes)
    else:
        block = np.asarray(values[(slice(d0, d1), *(slice(None),) * row_axis, rows)])
    block = np.moveaxis(block, 1 + row_axis, 1)
    return np.ascontiguousarray(_pad(_pad(block, 0, pad_d), 1, pad_r))


def block_params(
    arrays: Mapping[str, Any], row_axis: int, rows: Any, pad_r: int
) -> dict[str, np.ndarray]:
    """Return a guide's per-row parameters of one site at ``rows``, rows leading.

    Args:
        arrays: The site's parameters by role, each in the site's batch layout.
        row_axis: The site's row axis.
        rows: The block's rows: a slice or an index array.
        pad_r: Rows to pad to (repeating the last one).
    """
    out = {}
    for role, value in arrays.items():
        block = np.moveaxis(rows_of(value, row_axis, rows), row_axis, 0)
        out[role] = np.ascontiguousarray(_pad(block, 0, pad_r))
    return out


def guide_draw_words(row_words: jax.Array, draw_index: jax.Array) -> jax.Array:
    """Return the two key words of one draw of the per-row sites drawn from a guide.

    Args:
        row_words: The posterior's row key: two ``uint32`` words.
        draw_index: Global index of the draw.
    """
    w1, w2 = threefry2x32(
        row_words[0], row_words[1], _TAG_GUIDE, jnp.asarray(draw_index).astype(jnp.uint32)
    )
    return jnp.stack([w1, w2])


def _guide_key(words: jax.Array, name: str, row_offset: Any) -> jax.Array:
    from dopax.sampling.rng import name_tag

    k1, k2 = threefry2x32(words[0], words[1], _TAG_GUIDE, name_tag(name))
    data = jnp.stack([k1, k2, jnp.asarray(row_offset, jnp.uint32)])
    return jax.random.wrap_key_data(data, impl=ROW_KEY_IMPL)


def _value(
    spec: RowLatentSpec,
    site: Mapping[str, Any],
    draw_values: Mapping[str, Any],
    params: Mapping[str, Any],
    words: jax.Array,
    row_offset: Any,
) -> Any:
    """One draw's value of a per-row site in the site's own layout."""
    if spec.kind == DRAWS:
        return jnp.moveaxis(draw_values[spec.name], 0, spec.row_axis)
    p = params[spec.name]
    loc = p["loc"]
    if spec.kind == DELTA:
        return jnp.moveaxis(loc, 0, spec.row_axis)
    eps = jax.random.normal(_guide_key(words, spec.name, row_offset), jnp.shape(loc), loc.dtype)
    unconstrained = jnp.moveaxis(loc + p["scale"] * eps, 0, spec.row_axis)
    return biject_to(site["fn"].support)(unconstrained)


def substitute_fn(
    specs: tuple[RowLatentSpec, ...],
    draw_values: Mapping[str, Any],
    params: Mapping[str, Any],
    words: jax.Array,
    row_offset: Any,
) -> Callable[[Mapping[str, Any]], Any]:
    """Return a ``substitute_fn`` that gives per-row sites their values for one draw.

    Args:
        specs: The per-row sites.
        draw_values: The draw's values of :data:`DRAWS` sites, rows leading.
        params: Guide parameters of the other sites, by site and role, rows leading.
        words: The draw's two key words for guide draws (:func:`guide_draw_words`).
        row_offset: Global index of the block's first row.
    """
    by_name = {s.name: s for s in specs}

    def fn(site: Mapping[str, Any]) -> Any:
        spec = by_name.get(site["name"]) if site["type"] == "sample" else None
        if spec is None:
            return None
        return _value(spec, site, draw_values, params, words, row_offset)

    return fn
