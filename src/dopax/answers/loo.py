"""PSIS-LOO as a block program, and the ArviZ ``ELPDData`` of a finished result.

:class:`LooProgram` runs the pointwise log-likelihood of a block (every draw
of its rows) and reduces it with :func:`~dopax.reductions.psis.psis_loo` inside
the same compiled program: only per-row ``loo_i``, ``pareto_k`` and
``lppd_i`` leave it, never the draws x rows matrix. :class:`LooTotals`
gathers the sums that ArviZ reports, block by block; :func:`elpd_data`
makes ArviZ's ``ELPDData`` whose pointwise values are read lazily from the
result.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from dopax.answers.program import DrawReduction
from dopax.parallel.sharded import BlockInputs, OutputAxes
from dopax.reductions.psis import psis_loo

__all__ = [
    "LOO_GROUP",
    "BlockTotals",
    "LooProgram",
    "LooTotals",
    "block_totals",
    "elpd_data",
    "good_k",
    "relative_ess",
    "require_arviz",
]

#: The result group of ``loo``.
LOO_GROUP = "loo"
#: The variables of a ``loo`` result.
LOO_VARIABLES = ("loo_i", "pareto_k")


def require_arviz() -> Any:
    """Return the ``arviz`` module, or raise an ImportError saying how to install it."""
    try:
        import arviz
    except ImportError as err:  # pragma: no cover - the test environment has ArviZ
        raise ImportError(
            "`loo` returns ArviZ's ELPDData: install ArviZ, e.g. `pip install 'dopax[arviz]'`."
        ) from err
    return arviz


#: Stored values of one variable a relative effective sample size reads at once.
ESS_PIECE_BYTES = 8 << 20


def relative_ess(posterior: Any) -> float:
    """Return the relative effective sample size ``arviz.loo`` would use for ``posterior``.

    1 for one chain; for several, the mean over every posterior element of
    its effective sample size (``arviz.ess``, ``method="mean"``), over the
    number of draws. The effective sample size is elementwise, so each
    variable is read and measured in pieces of its elements of about
    :data:`ESS_PIECE_BYTES`: a per-row latent site of a trace (draws x rows)
    is never held whole.

    Args:
        posterior: A :class:`~dopax.inference.posterior.Posterior`.
    """
    if posterior.num_chains <= 1:
        return 1.0
    az = require_arviz()
    total, count = 0.0, 0
    for name, value in posterior.by_chain().items():
        for piece in _element_pieces(value, ESS_PIECE_BYTES):
            array = np.asarray(value[(slice(None), slice(None), *piece)])
            dims = ("chain", "draw", *(f"{name}_dim_{i}" for i in range(array.ndim - 2)))
            ess = np.asarray(az.ess(xr.Dataset({name: (dims, array)}), method="mean")[name])
            total += float(ess.sum(dtype=np.float64))
            count += ess.size
    if not count:  # no latent element to measure: the draws are taken as independent
        return 1.0
    return total / count / posterior.num_draws


def _element_pieces(value: Any, limit: int) -> list[tuple[slice, ...]]:
    """Cut the element axes of ``value`` (``(chain, draw, ...)``) into pieces of ``limit`` bytes.

    The first element axis whose trailing axes fit ``limit`` is split (in
    whole stored chunks where they fit), every axis before it is taken one
    index at a time, so any axis may hold the rows. A piece holds at least
    one element (all its chains and draws), so it exceeds ``limit`` only
    when one element does.
    """
    shape = tuple(int(n) for n in value.shape)
    rest = shape[2:]
    if not rest:
        return [()]
    line = shape[0] * shape[1] * np.dtype(value.dtype).itemsize
    fits = [line * int(np.prod(rest[i + 1 :], dtype=np.int64)) <= limit for i in range(len(rest))]
    axis = fits.index(True) if True in fits else len(rest) - 1
    inner = line * int(np.prod(rest[axis + 1 :], dtype=np.int64))
    step = max(1, limit // max(inner, 1))
    chunks = getattr(value, "chunks", None)  # a stored array: whole chunks where they fit
    if chunks is not None and len(chunks) == len(shape) and step >= chunks[2 + axis]:
        step = step // chunks[2 + axis] * chunks[2 + axis]
    splits = [slice(a, a + step) for a in range(0, rest[axis], step)]
    pieces: list[tuple[slice, ...]] = []
    for lead in np.ndindex(*rest[:axis]):
        head = tuple(slice(i, i + 1) for i in lead)
        pieces.extend((*head, split) for split in splits)
    return pieces


def good_k(num_draws: int) -> float:
    """Return the Pareto ``k`` above which PSIS is unreliable: ``min(1 - 1 / log10(S), 0.7)``.

    Args:
        num_draws: Number of draws ``S``.
    """
    return min(1 - 1 / math.log10(num_draws), 0.7) if num_draws > 1 else 0.7


@dataclasses.dataclass(frozen=True)
class LooProgram(DrawReduction):
    """PSIS-LOO of one observed site over all draws of a block.

    Block arguments are the forward pass's (the kernel's rows include the
    observed output). Blocks must hold every draw (:attr:`whole_draws`).

    Attributes:
        forward: The log-likelihood pass of the block.
        site: The observed site.
        row_axis: The site's row axis (within its shape), or ``None``.
        reff: Relative effective sample size of the draws.
    """

    site: str
    row_axis: int | None
    reff: float = 1.0

    @property
    def outputs(self) -> tuple[OutputAxes, ...]:
        """``loo_i``, ``pareto_k`` and ``lppd_i``, each shaped like the site."""
        return tuple(OutputAxes(n, None, self.row_axis) for n in (*LOO_VARIABLES, "lppd_i"))

    def local(self, inputs: BlockInputs) -> dict[str, jax.Array]:
        """Run the log-likelihood of one block and reduce it (see the class docstring)."""
        log_lik = self.forward.local(inputs)[self.site]
        loo_i, pareto_k, lppd_i = psis_loo(jnp.moveaxis(log_lik, 0, -1), self.reff)
        return {"loo_i": loo_i, "pareto_k": pareto_k, "lppd_i": lppd_i}


@dataclasses.dataclass(frozen=True)
class BlockTotals:
    """One block's share of a ``loo`` call's totals.

    Attributes:
        count: Its rows (observations).
        mean: The mean of their ``loo_i``.
        m2: The sum of squared deviations of their ``loo_i`` from ``mean``.
        lppd: The sum of their ``lppd_i``.
        above: Rows whose Pareto ``k`` exceeds the threshold.
        above_07: Rows whose Pareto ``k`` exceeds 0.7.
    """

    count: int
    mean: float
    m2: float
    lppd: float
    above: int
    above_07: int


def block_totals(loo_i: Any, pareto_k: Any, lppd_i: Any, threshold: float) -> BlockTotals:
    """Return one block's share of the totals, from its pointwise values.

    Args:
        loo_i: The block's pointwise ``loo_i``.
        pareto_k: Their Pareto ``k``.
        lppd_i: Their log pointwise predictive densities.
        threshold: Pareto ``k`` above which a row counts as unreliable.
    """
    values = np.asarray(loo_i, np.float64).ravel()
    k = np.asarray(pareto_k, np.float64).ravel()
    if values.size == 0:
        return BlockTotals(0, 0.0, 0.0, 0.0, 0, 0)
    b_mean = float(values.mean())
    return BlockTotals(
        count=int(values.size),
        mean=b_mean,
        m2=float(np.square(values - b_mean).sum()),
        lppd=float(np.asarray(lppd_i, np.float64).sum()),
        above=int(np.sum(k > threshold)),
        above_07=int(np.sum(k > 0.7)),
    )


class LooTotals:
    """Sums over rows of a ``loo`` call's blocks, in float64.

    Each block's :func:`block_totals` (computed where the block ran) is
    merged in row order. ``loo_i`` is summed with its spread (Chan's pairwise
    update of the mean and the sum of squared deviations), so the standard
    error does not cancel however many rows.

    Args:
        threshold: Pareto ``k`` above which a row counts as unreliable.
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.lppd = 0.0
        self.above = 0
        self.above_07 = 0

    def merge(self, block: BlockTotals) -> None:
        """Add one block's sums (blocks in row order give the same totals everywhere)."""
        if block.count == 0:
            return
        total = self.count + block.count
        delta = block.mean - self.mean
        self.m2 += block.m2 + delta * delta * self.count * block.count / total
        self.mean += delta * block.count / total
        self.count = total
        self.lppd += block.lppd
        self.above += block.above
        self.above_07 += block.above_07

    @property
    def elpd(self) -> float:
        """The sum of ``loo_i``."""
        return self.mean * self.count

    @property
    def se(self) -> float:
        """ArviZ's standard error: ``sqrt(n * var(loo_i))`` (population variance)."""
        return math.sqrt(self.m2) if self.count else math.nan

    def attrs(self, num_draws: int) -> dict[str, Any]:
        """Return the totals as root attributes of the result."""
        return {
            "elpd_loo": self.elpd,
            "se": self.se,
            "p_loo": self.lppd - self.elpd,
            "n_samples": int(num_draws),
            "n_data_points": int(self.count),
            "warning": bool(self.above > 0),
            "good_k": float(self.threshold),
            "pareto_k_above_good_k": int(self.above),
            "pareto_k_above_0_7": int(self.above_07),
            "scale": "log",
        }


def elpd_data(tree: xr.DataTree) -> Any:
    """Return ArviZ's ``ELPDData`` (``pointwise=True`` fields) of a ``loo`` result.

    ``loo_i`` and ``pareto_k`` are the result's variables, read lazily when
    their values are asked for; ``attrs["artifact_path"]`` is the result's
    folder (``None`` in memory).

    Args:
        tree: A result written by :meth:`ImpactModel.loo`.
    """
    elpd_type = require_arviz().stats.ELPDData

    node = tree[LOO_GROUP]
    assert isinstance(node, xr.DataTree)
    ds = node.to_dataset()
    a = tree.attrs
    elpd = elpd_type(
        data=[
            float(a["elpd_loo"]),
            float(a["se"]),
            float(a["p_loo"]),
            int(a["n_samples"]),
            int(a["n_data_points"]),
            bool(a["warning"]),
            ds["loo_i"].rename("loo_i"),
            ds["pareto_k"].rename("pareto_shape"),
            str(a["scale"]),
            float(a["good_k"]),
        ],
        index=[
            "elpd_loo",
            "se",
            "p_loo",
            "n_samples",
            "n_data_points",
            "warning",
            "loo_i",
            "pareto_k",
            "scale",
            "good_k",
        ],
    )
    # where the pointwise values are read from (pandas keeps ``attrs`` with the series)
    elpd.attrs["artifact_path"] = a.get("artifact_path")
    return elpd
