"""The DataTree output schema: group names, dimension names, attributes.

Pure: no file-system work here. Every builder and sink takes its names from
this module, so the in-memory and persisted results have one layout.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Mapping
from typing import Any

import pandas as pd
import xarray as xr

__all__ = [
    "GROUPS",
    "POSTERIOR",
    "PRIOR_PREDICTIVE",
    "POSTERIOR_PREDICTIVE",
    "PREDICTIONS",
    "LOG_LIKELIHOOD",
    "OBSERVED_DATA",
    "SUMMARY",
    "LOO",
    "DATA_GROUPS",
    "CHUNKED_GROUPS",
    "POSITION_ATTRS",
    "DEVICES_ATTR",
    "SHARD_AXIS_ATTR",
    "SiteLayout",
    "base_attrs",
    "position_coords",
    "site_dims",
    "split_draws",
]

POSTERIOR = "posterior"
PRIOR_PREDICTIVE = "prior_predictive"
POSTERIOR_PREDICTIVE = "posterior_predictive"
PREDICTIONS = "predictions"
LOG_LIKELIHOOD = "log_likelihood"
#: Sampler statistics of MCMC draws (ArviZ's name).
SAMPLE_STATS = "sample_stats"
OBSERVED_DATA = "observed_data"
#: Per-row summaries over draws (``summarize``): no chain and draw dimensions.
SUMMARY = "summary"
#: Pointwise PSIS-LOO values (``loo``): no chain and draw dimensions.
LOO = "loo"

#: Every group a dopax result may hold (ArviZ's names).
GROUPS: tuple[str, ...] = (
    POSTERIOR,
    PRIOR_PREDICTIVE,
    POSTERIOR_PREDICTIVE,
    PREDICTIONS,
    LOG_LIKELIHOOD,
    OBSERVED_DATA,
    SUMMARY,
    LOO,
)

#: Groups without chain and draw dimensions (ArviZ's data groups, and dopax's
#: per-row answers).
DATA_GROUPS: tuple[str, ...] = (OBSERVED_DATA, SUMMARY, LOO)

#: Groups returned as Dask arrays, chunked as stored: the draws a user reduces
#: (means, quantiles over millions of rows), which then run chunk by chunk in
#: bounded memory. The other groups (``posterior``, ``log_likelihood``,
#: ``observed_data``) are what ArviZ's statistics read whole; ArviZ 0.2x applies
#: its functions with ``xarray.apply_ufunc``, which refuses Dask arrays
#: (``az.summary``, ``az.loo`` and ``az.hdi`` even with ArviZ's own Dask mode
#: on), so these groups are returned as lazily read, unchunked arrays: nothing
#: is read until a value is asked for, and then the variable is read from the
#: store (not kept in memory).
CHUNKED_GROUPS: tuple[str, ...] = (PRIOR_PREDICTIVE, POSTERIOR_PREDICTIVE, PREDICTIONS)

CHAIN = "chain"
DRAW = "draw"

# Effect results (``compare_scenarios``): child groups and dimensions.
#: Per-draw scenario means and contrasts.
EFFECT_DRAWS = "draws"
#: Per-draw means and contrasts by group of ``by``.
EFFECT_BY_GROUP = "by_group"
#: Per-row contrast summaries.
EFFECT_ROWS = "rows"
#: Every scenario's kept draws of the outcome (``keep_draws=True``).
SCENARIO_DRAWS = "scenario_draws"
SCENARIO = "scenario"
CONTRAST = "contrast"
GROUP = "group"
ROW = "row"

#: Root attribute: how many devices a call ran on.
DEVICES_ATTR = "dopax_devices"
#: Root attribute: the axis (``"obs"`` or ``"draw"``) a call split across devices.
SHARD_AXIS_ATTR = "dopax_shard_axis"


#: Attributes of a dimension coordinate that holds the positions ``0 .. n - 1``.
#: Readers (:func:`dopax.open_result`) index such a coordinate with a
#: :class:`pandas.RangeIndex`, which takes constant memory whatever ``n``.
POSITION_ATTRS: Mapping[str, str] = {"dopax_index": "range"}


def position_coords(sizes: Mapping[str, int]) -> xr.Coordinates:
    """Return integer position coordinates ``0 .. n - 1`` for the given dimensions.

    Each is indexed by a :class:`pandas.RangeIndex`, so a coordinate of ten
    million rows takes no memory until its values are asked for, while label
    selection (``.sel``) works as with any integer index. The coordinates carry
    :data:`POSITION_ATTRS`.

    Args:
        sizes: Dimension name to length.
    """
    coords = xr.Coordinates({dim: pd.RangeIndex(size, name=dim) for dim, size in sizes.items()})
    for dim in sizes:
        coords[dim].attrs.update(POSITION_ATTRS)
    return coords


def site_dims(site: str, ndim: int) -> tuple[str, ...]:
    """Return the dimension names of a site with ``ndim`` dimensions beyond chain and draw.

    Args:
        site: The site (variable) name.
        ndim: Number of dimensions of one draw of the site.
    """
    return (CHAIN, DRAW, *(f"{site}_dim_{i}" for i in range(ndim)))


def split_draws(num_draws_total: int, num_chains: int) -> tuple[int, int]:
    """Return ``(chains, draws_per_chain)`` for a flat draw axis of ``num_draws_total``.

    Args:
        num_draws_total: Length of the flat draw axis (chains times draws).
        num_chains: Number of chains the flat axis holds, chain-major.

    Raises:
        ValueError: If the flat length is not a multiple of ``num_chains``.
    """
    if num_chains < 1 or num_draws_total % num_chains:
        raise ValueError(
            f"{num_draws_total} draws cannot be split into {num_chains} chains of equal length."
        )
    return num_chains, num_draws_total // num_chains


@dataclasses.dataclass(frozen=True)
class SiteLayout:
    """Shape, type and chunking of one variable of a result.

    A variable of a data group (:data:`DATA_GROUPS`, e.g. ``observed_data``)
    has no chain and draw dimensions: its stored shape is ``shape`` and its
    flat layout too (``num_chains`` and ``num_draws`` are then 1).

    Attributes:
        group: The group (one of :data:`GROUPS`).
        name: The variable (site) name.
        num_chains: Number of chains.
        num_draws: Draws per chain.
        shape: Shape of one draw (the site's own shape).
        dtype: NumPy dtype string.
        chunks: Chunk shape over ``(chain, draw, *shape)`` (over ``shape`` for
            a data group).
        dim_names: Names of the dimensions of ``shape`` (default
            ``<name>_dim_<i>``), e.g. a summary's site dimensions.
    """

    group: str
    name: str
    num_chains: int
    num_draws: int
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    dim_names: tuple[str, ...] | None = None

    @property
    def is_data(self) -> bool:
        """Whether the variable has no chain and draw dimensions (a data group)."""
        return self.group in DATA_GROUPS

    @property
    def full_shape(self) -> tuple[int, ...]:
        """Shape of the stored array, ``(chain, draw, *shape)`` (``shape`` for data)."""
        if self.is_data:
            return tuple(self.shape)
        return (self.num_chains, self.num_draws, *self.shape)

    @property
    def flat_shape(self) -> tuple[int, ...]:
        """Shape of the flat layout blocks address, ``(S, *shape)`` (``shape`` for data)."""
        if self.is_data:
            return tuple(self.shape)
        return (self.num_chains * self.num_draws, *self.shape)

    @property
    def dims(self) -> tuple[str, ...]:
        """Dimension names of the stored array."""
        dims = site_dims(self.name, len(self.shape))
        if self.dim_names is not None:
            dims = (*dims[:2], *self.dim_names)
        return dims[2:] if self.is_data else dims


def base_attrs(extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Return the root attributes every result carries.

    Args:
        extra: Further attributes to merge in (e.g. ``artifact_path``).
    """
    import numpyro

    from dopax._version import __version__

    attrs: dict[str, Any] = {
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(),
        "dopax_version": __version__,
        # ArviZ 1.0's provenance attributes.
        "creation_library": "dopax",
        "creation_library_version": __version__,
        "inference_library": "numpyro",
        "inference_library_version": numpyro.__version__,
    }
    if extra:
        attrs.update(extra)
    return attrs
