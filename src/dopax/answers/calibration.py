"""Calibration from a summary result: the PIT values' ECDF against the uniform, and a plot.

A calibrated model's probability integral transforms (PIT: the share of
predictive draws below each observed value, ``<site>_pit`` of
:meth:`~dopax.ImpactModel.summarize`) are uniform on ``[0, 1]``. The ECDF of
the PIT values is counted chunk by chunk, so ten million rows read lazily
take little memory, and drawn against the uniform with a simultaneous band
from the Dvoretzky-Kiefer-Wolfowitz inequality: a calibrated model's ECDF
stays inside it everywhere with probability at least ``prob``. Matplotlib is
imported inside the plotting function.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from dopax.output import schema

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["PitEcdf", "pit_ecdf", "pit_values", "plot_calibration"]

#: Elements read at a time from a lazily stored PIT variable.
_CHUNK = 1 << 20


def pit_values(result: Any, site: str | None = None) -> xr.DataArray | np.ndarray:
    """Return the PIT values of a summary result (lazy when the result is), or of an array.

    Args:
        result: A result of :meth:`~dopax.ImpactModel.summarize` with ``y``, its
            ``summary`` group, a DataArray or an array of PIT values.
        site: Which site's ``<site>_pit`` (default: the result's observed site).

    Raises:
        ValueError: If the result holds no PIT values (it was summarised without ``y``).
    """
    if isinstance(result, xr.DataTree):
        node = result[schema.SUMMARY] if schema.SUMMARY in result.children else result
        name = site or result.attrs.get("observed")
        ds = node.to_dataset()
        names = [str(v) for v in ds.data_vars if str(v).endswith("_pit")]
        if name is not None and f"{name}_pit" in names:
            return ds[f"{name}_pit"]
        if site is None and len(names) == 1:
            return ds[names[0]]
        raise ValueError(
            "The result holds no PIT values"
            + (f" of site {site!r}" if site else "")
            + f" (variables with them: {names}); summarise with the observed output, "
            "e.g. `model.summarize(X, y)`."
        )
    if isinstance(result, xr.DataArray):
        return result
    return np.asarray(result)


@dataclasses.dataclass(frozen=True)
class PitEcdf:
    """The ECDF of PIT values on a grid, with a simultaneous band for uniform values.

    Attributes:
        grid: Points in ``[0, 1]``.
        ecdf: Share of PIT values at or below each point.
        count: Number of PIT values.
        band: Half-width of the band: a uniform sample's ECDF lies within
            ``grid +- band`` everywhere with probability at least ``prob``.
        prob: The band's probability.
    """

    grid: np.ndarray
    ecdf: np.ndarray
    count: int
    band: float
    prob: float

    @property
    def max_deviation(self) -> float:
        """Largest ``|ECDF - uniform|`` on the grid."""
        return float(np.max(np.abs(self.ecdf - self.grid)))

    @property
    def within_band(self) -> bool:
        """Whether the ECDF stays inside the band at every grid point."""
        return self.max_deviation <= self.band


def _chunks(values: Any) -> Any:
    """Yield the values as flat NumPy arrays of at most about ``_CHUNK`` elements."""
    if isinstance(values, xr.DataArray):
        if values.ndim == 0:
            yield np.asarray(values.values).ravel()
            return
        dim = values.dims[0]
        per_row = max(1, values.size // max(values.sizes[dim], 1))
        step = max(1, _CHUNK // per_row)
        for start in range(0, values.sizes[dim], step):
            yield np.asarray(values.isel({dim: slice(start, start + step)}).values).ravel()
        return
    flat = np.asarray(values).ravel()
    for start in range(0, flat.size, _CHUNK):
        yield flat[start : start + _CHUNK]


def pit_ecdf(
    result: Any, *, site: str | None = None, points: int = 201, prob: float = 0.99
) -> PitEcdf:
    """Count the ECDF of PIT values on ``points`` grid points, chunk by chunk.

    Args:
        result: What :func:`pit_values` takes.
        site: Which site's PIT values.
        points: Number of grid points in ``[0, 1]``.
        prob: Probability of the simultaneous band (DKW:
            ``sqrt(log(2 / (1 - prob)) / (2 n))``).

    Returns:
        The ECDF on the grid, the number of values and the band.

    Raises:
        ValueError: For no PIT values, NaN values, or ``prob`` outside ``(0, 1)``.
    """
    if not 0.0 < prob < 1.0:
        raise ValueError(f"`prob` must lie strictly between 0 and 1; got {prob!r}.")
    grid = np.linspace(0.0, 1.0, max(int(points), 2))
    counts = np.zeros(grid.size, np.int64)
    total = 0
    for chunk in _chunks(pit_values(result, site)):
        if np.isnan(chunk).any():
            raise ValueError("The PIT values hold NaN; every row needs an observed value.")
        counts += np.searchsorted(np.sort(chunk), grid, side="right")
        total += chunk.size
    if total == 0:
        raise ValueError("There are no PIT values.")
    band = math.sqrt(math.log(2.0 / (1.0 - prob)) / (2.0 * total))
    return PitEcdf(grid, counts / total, total, band, prob)


def plot_calibration(
    result: Any,
    *,
    site: str | None = None,
    prob: float = 0.99,
    kind: str = "ecdf",
    bins: int = 20,
    ax: Axes | None = None,
) -> Figure:
    """Plot the calibration of a model from the PIT values of a summary result.

    ``kind="ecdf"`` draws the ECDF of the PIT values minus the uniform CDF
    with the band a calibrated model stays inside with probability ``prob``
    (a U shape: predictions too narrow; an arch: too wide; a slope: biased);
    ``kind="hist"`` draws their histogram with the uniform's expected count
    and a pointwise ``prob`` band per bin.

    Args:
        result: A result of :meth:`~dopax.ImpactModel.summarize` with ``y`` (or
            its PIT values).
        site: Which site's PIT values (default: the observed site).
        prob: Probability of the band.
        kind: ``"ecdf"`` or ``"hist"``.
        bins: Number of bins of the histogram.
        ax: Axes to draw on (default: a new figure).

    Returns:
        The figure.

    Raises:
        ValueError: For an unknown ``kind`` or a result without PIT values.
    """
    if kind not in ("ecdf", "hist"):
        raise ValueError(f"`kind` must be 'ecdf' or 'hist'; got {kind!r}.")
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6.0, 4.0), layout="constrained")
    assert ax is not None
    if kind == "ecdf":
        curve = pit_ecdf(result, site=site, prob=prob)
        zero = np.zeros_like(curve.grid)
        ax.fill_between(
            curve.grid, zero - curve.band, zero + curve.band, color="C0", alpha=0.2,
            linewidth=0, label=f"{prob:.0%} band for a calibrated model",
        )  # fmt: skip
        ax.plot(curve.grid, curve.ecdf - curve.grid, color="C1", label="PIT ECDF - uniform")
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_ylabel("ECDF difference")
        title = f"Calibration ({curve.count:,} observations)"
    else:
        edges = np.linspace(0.0, 1.0, max(int(bins), 1) + 1)
        counts = np.zeros(edges.size - 1, np.int64)
        for chunk in _chunks(pit_values(result, site)):
            counts += np.histogram(chunk, bins=edges)[0]
        n = int(counts.sum())
        p = 1.0 / counts.size
        spread = _normal_quantile(0.5 + prob / 2) * math.sqrt(n * p * (1 - p))
        ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="C1", alpha=0.7)
        ax.axhspan(n * p - spread, n * p + spread, color="C0", alpha=0.2, linewidth=0)
        ax.axhline(n * p, color="black", linewidth=0.8)
        ax.set_ylabel("Observations")
        title = f"PIT histogram ({n:,} observations)"
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("PIT")
    ax.set_title(title)
    if kind == "ecdf":
        ax.legend(loc="best", fontsize="small", frameon=False)
    from matplotlib.figure import Figure as _Figure

    parent: Any = ax.figure
    while not isinstance(parent, _Figure):  # through any subfigures
        parent = parent.figure
    return parent


def _normal_quantile(p: float) -> float:
    """Return the standard normal quantile of ``p``."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(p)
