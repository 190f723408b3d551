"""The summary block program: per-row answers computed where the draws are made.

:class:`SummaryProgram` runs the forward pass of a block (every draw of its
rows) and reduces each return site over the draws inside the same compiled
program, so a block's draws never leave the device: per row the mean, the
standard deviation (``ddof=1``), the bounds of a central (``"eti"``) or
highest-density (``"hdi"``) interval, extra quantiles and, given the
observed output, its probability integral transform (PIT) and whether the
interval covers it. Outputs have the site's own shape, rows where the site
has them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dopax.answers.program import DrawReduction
from dopax.parallel.sharded import BlockInputs, OutputAxes
from dopax.reductions.draws import quantile_name, summarize_draws
from dopax.sampling.threefry import threefry2x32

__all__ = ["COVERED", "SiteSummary", "SummaryProgram", "stat_names"]

#: Output holding how many observed values of a block lie in their interval.
COVERED = "covered"
#: Stream of the uniforms that break ties of discrete PIT values (folded into the call key).
_PIT_STREAM = 0x9E3779B9


def stat_names(site: str, quantiles: tuple[float, ...], observed: bool) -> list[str]:
    """Return the summary variables of ``site``, in order.

    Args:
        site: The site name.
        quantiles: Extra quantiles.
        observed: Whether the site has observed values (adds ``<site>_pit``).
    """
    names = [f"{site}_{s}" for s in ("mean", "sd", "lower", "upper")]
    names += [f"{site}_{quantile_name(q)}" for q in quantiles]
    return [*names, f"{site}_pit"] if observed else names


@dataclasses.dataclass(frozen=True)
class SiteSummary:
    """A summarised site.

    Attributes:
        name: Site name.
        row_axis: Axis of the site's shape that indexes rows, or ``None``.
        discrete: Whether the site's values are integers or booleans.
    """

    name: str
    row_axis: int | None
    discrete: bool


def _uniforms(call_key: jax.Array, row_offset: jax.Array, shape: tuple[int, ...], axis: int) -> Any:
    """One uniform per element, from the call key, the element's global row and position."""
    words = jax.random.bits(jax.random.fold_in(call_key, _PIT_STREAM), (2,), jnp.uint32)
    rows = jnp.asarray(row_offset, jnp.uint32) + jax.lax.broadcasted_iota(jnp.uint32, shape, axis)
    position = jnp.zeros(shape, jnp.uint32)
    for ax, size in enumerate(shape):
        if ax != axis:
            position = position * np.uint32(size) + jax.lax.broadcasted_iota(jnp.uint32, shape, ax)
    bits, _ = threefry2x32(words[0], words[1], rows, position)
    # 23 random mantissa bits: a float in [1, 2), minus one
    one_two = jax.lax.bitcast_convert_type((bits >> 9) | np.uint32(0x3F800000), jnp.float32)
    return one_two - 1.0


@dataclasses.dataclass(frozen=True)
class SummaryProgram(DrawReduction):
    """Per-row summaries of every return site over all draws of a block.

    Block arguments: ``rows = {"kernel": kernel rows, "observed": observed
    output (rows leading), optional}``, ``shared = {"kernel": kernel
    arguments, "n_rows": rows of the call}``; the rest as for the forward
    pass. Blocks must hold every draw (:attr:`whole_draws`).

    Attributes:
        forward: The forward pass of the block.
        sites: The summarised sites, in the forward pass's order.
        n_draws: Number of draws (all chains).
        prob: Probability of the interval.
        interval: ``"eti"`` or ``"hdi"``.
        quantiles: Extra quantiles.
        observed: The site whose observed values come in ``rows["observed"]``.
    """

    sites: tuple[SiteSummary, ...]
    n_draws: int
    prob: float = 0.94
    interval: str = "eti"
    quantiles: tuple[float, ...] = ()
    observed: str | None = None

    @property
    def outputs(self) -> tuple[OutputAxes, ...]:
        """Each site's summaries (the site's shape), and the covered count."""
        out = [
            OutputAxes(name, None, site.row_axis)
            for site in self.sites
            for name in stat_names(site.name, self.quantiles, site.name == self.observed)
        ]
        if self.observed is not None:
            out.append(OutputAxes(COVERED, None, None, summed_over_rows=True))
        return tuple(out)

    def _site(self, site: SiteSummary, value: jax.Array) -> dict[str, jax.Array]:
        out = summarize_draws(value, self.prob, self.interval, self.quantiles)
        return {f"{site.name}_{k}": v for k, v in out.items()}

    def _observed(
        self,
        site: SiteSummary,
        value: jax.Array,
        observed: jax.Array,
        stats: Mapping[str, jax.Array],
        call_key: jax.Array,
        row_offset: jax.Array,
        n_rows: jax.Array,
    ) -> dict[str, jax.Array]:
        axis = 0 if site.row_axis is None else site.row_axis
        y = jnp.moveaxis(observed, 0, axis).astype(jnp.float32)
        x = value.astype(jnp.float32)
        n = x.shape[0]
        below = jnp.sum(x < y, axis=0).astype(jnp.float32)
        if site.discrete:
            ties = jnp.sum(x == y, axis=0).astype(jnp.float32)
            below = below + _uniforms(call_key, row_offset, y.shape, axis) * ties
        pit = below / n
        lower, upper = stats[f"{site.name}_lower"], stats[f"{site.name}_upper"]
        rows = jnp.asarray(row_offset, jnp.uint32) + jax.lax.broadcasted_iota(
            jnp.uint32, y.shape, axis
        )
        real = rows < jnp.asarray(n_rows, jnp.uint32)
        covered = jnp.sum(((y >= lower) & (y <= upper) & real).astype(jnp.int32))
        return {f"{site.name}_pit": pit, COVERED: covered}

    def local(self, inputs: BlockInputs) -> dict[str, jax.Array]:
        """Run the forward pass on one block and summarise it (see the class docstring)."""
        kernel_inputs = inputs._replace(rows=inputs.rows["kernel"], shared=inputs.shared["kernel"])
        draws = self.forward.local(kernel_inputs)
        out: dict[str, jax.Array] = {}
        for site in self.sites:
            value = draws[site.name]
            stats = self._site(site, value)
            out.update(stats)
            if site.name == self.observed:
                observed, end = inputs.rows["observed"], inputs.shared["n_rows"]
                out.update(
                    self._observed(
                        site, value, observed, stats, inputs.call_key, inputs.row_offset, end
                    )
                )
        return out
