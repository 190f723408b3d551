"""The pure forward pass: one draw of a kernel on a block of rows.

Every predictive and log-likelihood computation in dopax, in memory or
streamed, runs :func:`forward_draw` (vmapped over draws). Handlers compose in
one order: ``do`` innermost (so it sees every site first), then ``substitute``
with the draw's latent values and the fitted values of ``numpyro.param``
sites, then :class:`~dopax.sampling.rng.RowKeySeed`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from numpyro import handlers

from dopax.parallel.batching import largest_divisor_at_most
from dopax.parallel.sharded import BlockInputs, OutputAxes
from dopax.sampling.rng import RowKeySeed, draw_words
from dopax.sampling.row_latent import RowLatentSpec, guide_draw_words, substitute_fn

__all__ = [
    "ForwardProgram",
    "PassSpec",
    "forward_block",
    "forward_draw",
    "map_draws",
    "restore_row_axes",
    "run_trace",
    "with_params",
]

PREDICT = "predict"
LOG_LIKELIHOOD = "log_likelihood"


@dataclasses.dataclass(frozen=True)
class PassSpec:
    """The static description of a forward pass (hashable: it keys compilation).

    Attributes:
        kernel: The NumPyro model function.
        static: Sorted ``(name, value)`` pairs of non-array kernel arguments.
        return_sites: Sites to return (predict) or observed sites (log-likelihood).
        kind: ``"predict"`` or ``"log_likelihood"``.
        global_latents: Latent sites without a row axis that are not supplied:
            they are drawn once per draw on the anchor row (row offset 0), so
            every batch of rows shares them.
        row_latents: Per-row latent sites whose values each block carries
            for its own rows (see :mod:`dopax.sampling.row_latent`).
        row_do_axes: Per-row intervention values whose rows are not on
            their first axis, with that axis: they travel rows first and are
            put back before the kernel runs.
    """

    kernel: Callable[..., Any]
    static: tuple[tuple[str, Any], ...]
    return_sites: tuple[str, ...]
    kind: str = PREDICT
    global_latents: tuple[str, ...] = ()
    row_latents: tuple[RowLatentSpec, ...] = ()
    row_do_axes: tuple[tuple[str, int], ...] = ()


class BroadcastDo(handlers.do):
    """NumPyro's ``do``, with each value broadcast to its site's shape first.

    The kernel downstream sees a value of the site's own shape whether the
    intervention gave a scalar, one value per time step or one per row (a
    scalar ``do`` on a ``(K, rows)`` site still sums over ``K``).
    """

    def process_message(self, msg: Any) -> None:
        """Broadcast the site's value to its shape, then intervene as ``do`` does."""
        name = msg.get("name")
        data: dict[str, Any] | None = self.data  # type: ignore[has-type]
        if msg["type"] == "sample" and data is not None and name in data:
            fn = msg["fn"]
            shape = tuple(fn.shape(tuple(msg["kwargs"].get("sample_shape", ()))))
            value = jnp.asarray(data[name])
            if value.shape != shape:
                with contextlib.suppress(ValueError):  # else as given: the kernel decides
                    value = jnp.broadcast_to(value, shape)
                self.data = {**data, name: value}
        super().process_message(msg)


def restore_row_axes(spec: PassSpec, row_do: Mapping[str, Any]) -> dict[str, Any]:
    """Put per-row intervention values that travel rows first back in their own layout.

    Args:
        spec: The pass description (its ``row_do_axes``).
        row_do: A block's per-row intervention values, rows first.
    """
    out = dict(row_do)
    for name, axis in spec.row_do_axes:
        if name in out:
            out[name] = jnp.moveaxis(out[name], 0, axis)
    return out


def run_trace(
    spec: PassSpec,
    words: jax.Array,
    row_offset: Any,
    latent: Mapping[str, Any],
    args: Mapping[str, Any],
    intervention: Mapping[str, Any],
    rows_fn: Callable[[Mapping[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """Trace the kernel once under dopax's handlers.

    Args:
        spec: The static pass description.
        words: The draw's two key words.
        row_offset: Global index of the first row of ``args``.
        latent: Values to substitute (whole).
        args: Array arguments of the kernel.
        intervention: Site values to impose with ``numpyro.handlers.do``.
        rows_fn: A ``substitute_fn`` giving per-row latents their values, or ``None``.
    """
    model: Callable[..., Any] = spec.kernel
    if intervention:
        model = BroadcastDo(model, data=dict(intervention))
    if latent:
        model = handlers.substitute(model, data=dict(latent))
    if rows_fn is not None:
        model = handlers.substitute(model, substitute_fn=rows_fn)
    model = RowKeySeed(model, words, row_offset)
    return handlers.trace(model).get_trace(**args, **dict(spec.static))


def site_value(trace: Mapping[str, Any], name: str, intervention: Mapping[str, Any]) -> Any:
    """Return the value a site takes downstream (the intervened value when intervened).

    Args:
        trace: A trace of the kernel.
        name: Site name.
        intervention: The intervention in force.
    """
    if name not in trace:
        raise KeyError(name)
    value = trace[name]["value"]
    if name in intervention:
        # ``do`` records the draw under ``name``; downstream sites see the imposed value.
        imposed = jnp.asarray(intervention[name], dtype=jnp.asarray(value).dtype)
        return jnp.broadcast_to(imposed, jnp.shape(value))
    return value


def forward_draw(
    spec: PassSpec,
    call_key: jax.Array,
    draw_index: jax.Array,
    row_offset: jax.Array,
    latent: Mapping[str, Any],
    args: Mapping[str, Any],
    intervention: Mapping[str, Any],
    anchor_args: Mapping[str, Any],
    intervention_anchor: Mapping[str, Any],
    row_values: Mapping[str, Any] | None = None,
    row_params: tuple[Any, Mapping[str, Any]] | None = None,
) -> dict[str, jax.Array]:
    """Run the kernel for one posterior draw on one block of rows.

    Args:
        spec: The static pass description.
        call_key: The call's PRNG key.
        draw_index: Global index of the draw.
        row_offset: Global index of the block's first row.
        latent: Latent values of this draw to substitute (may be empty).
        args: Array arguments of the kernel for this block of rows (and
            replicated array arguments).
        intervention: Site values to impose with ``numpyro.handlers.do``.
        anchor_args: ``args`` for the anchor row (the call's first row), used to
            draw ``spec.global_latents``.
        intervention_anchor: ``intervention`` for the anchor row.
        row_values: This draw's values of the per-row latents given by draws,
            rows leading (``spec.row_latents``).
        row_params: ``(row key words, parameters)``: the posterior's row
            key and the block's guide parameters of the other per-row
            latents by site and role, rows leading.

    Returns:
        For ``kind="predict"``, each return site's value; for
        ``kind="log_likelihood"``, each observed site's pointwise log density.
    """
    words = draw_words(call_key, draw_index)
    if spec.global_latents:
        anchor_trace = run_trace(spec, words, 0, latent, anchor_args, intervention_anchor)
        latent = {
            **latent,
            **{name: anchor_trace[name]["value"] for name in spec.global_latents},
        }
    rows_fn = None
    if spec.row_latents:
        row_words, site_params = row_params if row_params is not None else (None, {})
        guide_words = words if row_words is None else guide_draw_words(row_words, draw_index)
        rows_fn = substitute_fn(
            spec.row_latents, row_values or {}, site_params, guide_words, row_offset
        )
    trace = run_trace(spec, words, row_offset, latent, args, intervention, rows_fn)
    if spec.kind == LOG_LIKELIHOOD:
        return {
            name: trace[name]["fn"].log_prob(trace[name]["value"]) for name in spec.return_sites
        }
    return {name: jnp.asarray(site_value(trace, name, intervention)) for name in spec.return_sites}


def forward_block(spec: PassSpec, inputs: BlockInputs, cells_per_step: int) -> dict[str, jax.Array]:
    """Run :func:`forward_draw` for a block of draws on one block of rows.

    Draws run vmapped in sequential steps of about ``cells_per_step``
    draw-row cells each: one step (all draws vectorised, which XLA fuses
    and spreads over all cores) when the block has at most that many cells,
    one draw per step for blocks of more rows than that. Steps bound the
    memory of intermediate values (e.g. a neural network's activations).

    Args:
        spec: The static pass description.
        inputs: The block's inputs (draws, latent values, ``numpyro.param``
            values, row and shared arguments and interventions, anchor row).
        cells_per_step: Draw-by-row cells per sequential step.

    Returns:
        Each output with a leading draw axis of size ``D``.
    """
    args = {**inputs.shared, **inputs.rows}
    intervention = {**inputs.shared_do, **restore_row_axes(spec, inputs.row_do)}
    anchor_args = {**inputs.shared, **inputs.anchor}
    anchor_do = {**inputs.shared_do, **restore_row_axes(spec, inputs.anchor_do)}

    def one(draw_index: jax.Array, per_draw: Any) -> dict[str, jax.Array]:
        latent_d, row_values = per_draw
        return forward_draw(
            spec,
            inputs.call_key,
            draw_index,
            inputs.row_offset,
            with_params(inputs.params, latent_d),
            args,
            intervention,
            anchor_args,
            anchor_do,
            row_values,
            inputs.row_params,
        )

    n_rows = max((jnp.shape(v)[0] for v in inputs.rows.values()), default=1)
    per_draw = (dict(inputs.latent), dict(inputs.row_latent))
    return map_draws(one, inputs.draws, per_draw, int(n_rows), cells_per_step)


def with_params(params: Mapping[str, Any], latent: Mapping[str, Any]) -> dict[str, Any]:
    """Return the values one draw substitutes: ``numpyro.param`` values, then the draw's latents.

    A site with values per draw (a posterior that holds it) takes those.

    Args:
        params: Values of the kernel's ``numpyro.param`` sites, used by every draw.
        latent: The draw's latent values.
    """
    return {**params, **latent} if params else dict(latent)


def map_draws(
    one: Callable[[jax.Array, Any], Any],
    draw_indices: jax.Array,
    latent: Any,
    n_rows: int,
    cells_per_step: int,
) -> Any:
    """Apply ``one(draw_index, latent_d)`` to every draw, in steps of about ``cells_per_step``.

    All draws are vectorised in one step when ``draws x n_rows`` fits;
    otherwise draws run in sequential steps (vectorised within a step), so
    large row blocks keep their matrix products big and intermediate values
    only ever exist for one step's draws. Outputs get a leading draw axis.

    Args:
        one: The per-draw function.
        draw_indices: Global indices of the draws, shape ``(D,)``.
        latent: A pytree of values per draw (leading draw axis of size ``D``).
        n_rows: Rows of the block.
        cells_per_step: Draw-by-row cells per step.
    """
    n_draws = draw_indices.shape[0]
    per_step = max(1, min(n_draws, int(cells_per_step) // max(n_rows, 1)))
    if n_draws % per_step:
        # a shorter last step would be a second trace and program of the kernel:
        # take a step that divides the draws if one is at least half as large
        even = largest_divisor_at_most(n_draws, per_step)
        per_step = even if 2 * even >= per_step else per_step
    if per_step >= n_draws:
        return jax.vmap(one)(draw_indices, latent)
    if per_step == 1:
        # A plain loop: ``batch_size=1`` would wrap each draw in a vmap of one,
        # turning matrix products into batched ones, slower on CPU.
        return jax.lax.map(lambda xs: one(*xs), (draw_indices, latent))
    return jax.lax.map(lambda xs: one(*xs), (draw_indices, latent), batch_size=per_step)


@dataclasses.dataclass(frozen=True)
class ForwardProgram:
    """The block program of a forward pass (``predict``, ``log_likelihood``).

    Attributes:
        spec: The static pass description.
        row_axes: Each return site's row axis within its own shape, or ``None``.
        cells_per_step: Draw-by-row cells per sequential step.
        ndims: Each return site's number of dimensions (one draw). A block of
            one row whose site comes back without its row axis (a kernel
            that squeezes it away) gets the axis back. Empty: no such check.
    """

    spec: PassSpec
    row_axes: tuple[int | None, ...]
    cells_per_step: int
    ndims: tuple[int, ...] = ()

    @property
    def outputs(self) -> tuple[OutputAxes, ...]:
        """Every return site: draws first, then the site's own axes."""
        return tuple(
            OutputAxes(name, 0, None if axis is None else axis + 1)
            for name, axis in zip(self.spec.return_sites, self.row_axes, strict=True)
        )

    def local(self, inputs: BlockInputs) -> dict[str, jax.Array]:
        """Run :func:`forward_block` on one block (see :class:`BlockProgram`)."""
        out = forward_block(self.spec, inputs, self.cells_per_step)
        sites = zip(self.spec.return_sites, self.row_axes, self.ndims, strict=False)
        for name, axis, ndim in sites:
            if axis is not None and out[name].ndim == ndim:  # the row axis was squeezed away
                out[name] = jnp.expand_dims(out[name], axis + 1)
        return out
