"""The single-pass scenario engine: every scenario on every chunk, shared random numbers.

For each block of rows, the kernel runs once per scenario with the *same*
call key, so the scenarios share their random numbers (common random
numbers): observation noise cancels in contrasts. Reductions run inside the
compiled function and only small summaries leave the device: per draw the sum
of the outcome per scenario (and per group), and per row the posterior mean
and a central interval of each contrast.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dopax.sampling.forward import PassSpec, forward_draw, map_draws

__all__ = ["Scenario", "ScenarioBlockFn", "scenario_block_fn"]


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One scenario's departures from the base call.

    Attributes:
        name: Scenario name.
        rows: Kernel arguments replaced per row (full length).
        shared: Array kernel arguments replaced whole.
        row_do: Intervened sites with one value per row.
        shared_do: Intervened sites with one value for all rows.
    """

    name: str
    rows: dict[str, Any]
    shared: dict[str, Any]
    row_do: dict[str, Any]
    shared_do: dict[str, Any]


ScenarioBlockFn = Callable[..., dict[str, jax.Array]]


@functools.lru_cache(maxsize=32)
def scenario_block_fn(
    spec: PassSpec,
    site: str,
    n_scenarios: int,
    baseline: int,
    n_groups: int,
    interval: float,
    per_row: bool,
    keep_draws: bool = False,
) -> ScenarioBlockFn:
    """Return the jitted per-block reducer of a scenario comparison.

    The returned function takes ``(call_key, draw_indices, row_offset, latent,
    scenario_rows, scenario_shared, scenario_row_do, scenario_shared_do,
    anchor_rows, anchor_do, group_ids, row_mask)`` where every ``scenario_*``
    argument is a tuple with one mapping per scenario, and returns:
    ``sums`` (S, D), ``group_sums`` (S, D, G) and, with ``per_row``, ``diffs``
    (D, C, R): each contrast per draw and row, C = S - 1 contrasts.

    Args:
        spec: The pass description (``return_sites`` must be ``(site,)``).
        site: The outcome site.
        n_scenarios: Number of scenarios.
        baseline: Index of the baseline scenario.
        n_groups: Number of groups (1 when there is no grouping).
        interval: Central interval probability for per-row contrasts (part of
            the cache key only; intervals are computed by the caller).
        per_row: Whether to compute per-row contrast summaries.
        keep_draws: Whether to also return every scenario's draws as
            ``draws`` with shape ``(D, S, R, ...)``.
    """

    def fn(
        call_key: jax.Array,
        draw_indices: jax.Array,
        row_offset: jax.Array,
        latent: Mapping[str, Any],
        s_rows: tuple[Mapping[str, Any], ...],
        s_shared: tuple[Mapping[str, Any], ...],
        s_row_do: tuple[Mapping[str, Any], ...],
        s_shared_do: tuple[Mapping[str, Any], ...],
        anchor_rows: tuple[Mapping[str, Any], ...],
        anchor_do: tuple[Mapping[str, Any], ...],
        group_ids: jax.Array,
        row_mask: jax.Array,
    ) -> dict[str, jax.Array]:
        onehot = jax.nn.one_hot(group_ids, n_groups, dtype=jnp.float32) * row_mask[:, None]
        others = [s for s in range(n_scenarios) if s != baseline]

        def one(draw_index: jax.Array, latent_d: Mapping[str, Any]) -> dict[str, jax.Array]:
            # Every scenario of one draw in one place: their random numbers are
            # the same computation, which XLA evaluates once.
            values = []
            raws = []
            for s in range(n_scenarios):
                out = forward_draw(
                    spec,
                    call_key,
                    draw_index,
                    row_offset,
                    latent_d,
                    {**s_shared[s], **s_rows[s]},
                    {**s_shared_do[s], **s_row_do[s]},
                    {**s_shared[s], **anchor_rows[s]},
                    {**s_shared_do[s], **anchor_do[s]},
                )[site]
                raws.append(out)
                values.append(out.reshape(out.shape[0], -1).mean(axis=-1).astype(jnp.float32))
            stacked = jnp.stack(values)  # (S, R)
            res = {"sums": (stacked * row_mask).sum(axis=-1), "group_sums": stacked @ onehot}
            if per_row:
                res["diffs"] = jnp.stack([stacked[s] - stacked[baseline] for s in others])
            if keep_draws:
                res["draws"] = jnp.stack(raws)
            return res

        out = map_draws(one, draw_indices, latent, int(row_mask.shape[0]))
        result = {
            "sums": out["sums"].T,  # (S, D)
            "group_sums": jnp.moveaxis(out["group_sums"], 0, 1),  # (S, D, G)
        }
        if keep_draws:
            result["draws"] = out["draws"]  # (D, S, R, ...)
        if per_row:
            # (D, C, R): per-row means and intervals are taken on the host, where a
            # selection (numpy's partition) is ~7x faster than XLA's CPU sort.
            result["diffs"] = out["diffs"]
        return result

    return jax.jit(fn)


def group_codes(by: Any, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Encode per-row group labels as integer codes.

    Args:
        by: One label per row, or ``None``.
        n_rows: Number of rows.

    Returns:
        ``(codes, labels)``.

    Raises:
        ValueError: If ``by`` does not have one label per row.
    """
    if by is None:
        return np.zeros(n_rows, np.int32), np.asarray(["all"])
    labels_in = np.asarray(by)
    if labels_in.ndim != 1 or labels_in.shape[0] != n_rows:
        raise ValueError(
            f"`by` must hold one group label per row ({n_rows}); got shape {labels_in.shape}."
        )
    labels, codes = np.unique(labels_in, return_inverse=True)
    return codes.astype(np.int32), labels
