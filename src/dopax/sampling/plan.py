"""Planning a forward pass: which sites carry rows, and whether rows may be split.

Pure: it runs the kernel on tiny probes, never on the user's full data.

* A site's *row axis* is the one axis whose length follows the number of rows
  (probed at 2 and 3 rows, so no shape coincidence with the data can fool it).
  The row axis may fall anywhere in a site's shape: a ``scan`` over time
  stacks its sites time first, so a panel's output is ``(T, units)``.
* A latent site with a row axis that the posterior gives values for (draws,
  or a guide's per-row parameters) is a *per-row latent* (local latent):
  in-sample, each block carries its own rows' values of it
  (:mod:`dopax.sampling.row_latent`).
* Whether splitting rows into batches leaves every value unchanged is then
  checked directly: the kernel runs on five probe rows at once and split 2 + 3
  (per-row latents take the probe rows' values), and the results must agree
  along each site's row axis. No probe has a single row: a kernel may drop
  the row axis of a one-row batch (e.g. a network ending in ``.squeeze()``),
  and the engine never runs such a batch when rows are split (it pads to
  two). Kernels that couple rows (e.g. standardise ``X`` inside the model) or
  whose random sites do not give each row its own random stream fail this
  check and run with all rows together (the draw-axis path).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from dopax.sampling.forward import LOG_LIKELIHOOD, PassSpec
from dopax.sampling.prepare import (
    BoundArgs,
    intervention_row_axes,
    read_rows,
    split_intervention,
)
from dopax.sampling.probe import probe_kernel
from dopax.sampling.row_latent import (
    DRAWS,
    RowLatentSpec,
    block_draws,
    block_params,
    substitute_fn,
)

__all__ = ["ForwardPlan", "SiteInfo", "make_plan", "ROWS", "FULL"]

ROWS = "rows"
FULL = "full"

_PROBE_KEY = 20260101


@dataclasses.dataclass(frozen=True)
class SiteInfo:
    """Shape facts of one site.

    Attributes:
        name: Site name.
        row_axis: Axis of the site's own shape that indexes rows, or ``None``.
        shape: The site's shape for one draw, with the row axis at full length.
        dtype: NumPy dtype string.
    """

    name: str
    row_axis: int | None
    shape: tuple[int, ...]
    dtype: str


@dataclasses.dataclass(frozen=True)
class ForwardPlan:
    """How a forward pass runs.

    Attributes:
        path: ``"rows"`` (rows and draws may be split freely) or ``"full"``
            (all rows in one piece; only draws are split).
        outputs: Shape facts of each output site, in output order.
        row_sites: Every site of the kernel that has a row axis.
        local_latents: Posterior sites with a row axis (per-row latents).
        row_latents: How each per-row latent reaches a block (its row axis
            and source), in the order of ``local_latents``.
        global_latents: Latent sites without a row axis that the call does not
            supply (drawn once per draw on the anchor row).
        row_intervention_sites: Intervened sites given one value per row.
        row_intervention_axes: For those whose value holds the rows on
            another axis than its first (a site whose row axis is not its
            first), that axis: the value travels with the rows first.
        sample_sites: Every sample site of the kernel.
        reason: Why the ``"full"`` path was chosen, for the user's warning.
        split_checked: Whether the kernel was run split (see :func:`make_plan`);
            a ``"rows"`` plan that was not may not split rows yet.
        matmul_flops_per_row: Flops of the kernel's matrix products per row
            and draw (from the probes at 2 and 3 rows).
    """

    path: str
    outputs: tuple[SiteInfo, ...]
    row_sites: frozenset[str]
    local_latents: tuple[str, ...]
    row_latents: tuple[RowLatentSpec, ...] = ()
    global_latents: tuple[str, ...] = ()
    row_intervention_sites: tuple[str, ...] = ()
    row_intervention_axes: tuple[tuple[str, int], ...] = ()
    sample_sites: tuple[str, ...] = ()
    reason: str | None = None
    split_checked: bool = True
    matmul_flops_per_row: float = 0.0


def _take_rows(value: Any, index: np.ndarray) -> np.ndarray:
    head = read_rows(value, 0, int(index.max()) + 1)
    return np.asarray(head)[index]


def _probe_index(n_rows: int, size: int) -> np.ndarray:
    return np.minimum(np.arange(size), max(n_rows - 1, 0))


def _row_axis(shape_a: tuple[int, ...], shape_b: tuple[int, ...], a: int, b: int) -> int | None:
    """Return the row axis given a site's shapes at ``a`` and ``b`` probe rows."""
    if shape_a == shape_b:
        return None
    if len(shape_a) != len(shape_b):
        return -1
    changed = [i for i, (x, y) in enumerate(zip(shape_a, shape_b, strict=True)) if x != y]
    if len(changed) == 1 and shape_a[changed[0]] == a and shape_b[changed[0]] == b:
        return changed[0]
    return -1


def _full_shape(shape: tuple[int, ...], axis: int | None, n_rows: int) -> tuple[int, ...]:
    """Return a site's shape for ``n_rows`` rows from its shape at the probe's rows."""
    if axis is None or axis < 0:
        return tuple(shape)
    return (*shape[:axis], n_rows, *shape[axis + 1 :])


def _agree(x: np.ndarray, y: np.ndarray) -> bool:
    if x.shape != y.shape:
        return False
    if np.issubdtype(x.dtype, np.floating):
        return bool(np.allclose(x, y, rtol=1e-5, atol=1e-6, equal_nan=True))
    return bool(np.array_equal(x, y))


def make_plan(
    spec: PassSpec,
    bound: BoundArgs,
    *,
    latent: Mapping[str, Any],
    intervention: Mapping[str, Any] | None,
    strict_sites: bool = True,
    check_split: bool = True,
    row_guides: Mapping[str, tuple[str, Mapping[str, Any]]] | None = None,
) -> ForwardPlan:
    """Plan a forward pass by probing the kernel on a few rows.

    Running the kernel split (the one probe that compiles and runs) is needed
    only before rows are split; a call whose rows all run in one block may
    skip it (``check_split=False``) and get a plan with ``split_checked``
    false.

    Args:
        spec: The static pass description.
        bound: The call's bound inputs: kernel arguments with a leading row
            axis (full length), and array arguments used whole.
        latent: Latent values to substitute, leading axis draws (may be empty).
        intervention: Site name to value (validated here), or ``None``.
        strict_sites: Raise for a return site the pass lacks; otherwise leave
            it out of the plan's outputs (a site of another branch of the
            kernel, e.g. one that exists only when the output is observed).
        check_split: Whether to run the kernel split when nothing else
            decides the path.
        row_guides: Per-row sites drawn from a guide's parameters: site name
            to ``(kind, parameters by role)`` (see
            :mod:`dopax.sampling.row_latent`).

    Returns:
        The plan.

    Raises:
        ScenarioError: For an invalid intervention.
        KeyError: For a return site the kernel lacks (message lists the sites).
    """
    n_rows, row_args, shared_args = bound.n_rows, bound.rows, bound.shared
    small = {k: _take_rows(v, _probe_index(n_rows, 2)) for k, v in row_args.items()}
    large = {k: _take_rows(v, _probe_index(n_rows, 3)) for k, v in row_args.items()}
    probe2 = probe_kernel(spec.kernel, {**shared_args, **small}, spec.static)
    probe3 = probe_kernel(spec.kernel, {**shared_args, **large}, spec.static)
    sites2, sites3 = probe2.sites, probe3.sites
    shapes2 = {n: (i["shape"], i["dtype"]) for n, i in sites2.items() if "shape" in i}
    shapes3 = {n: (i["shape"], i["dtype"]) for n, i in sites3.items() if "shape" in i}
    row_axes: dict[str, int | None] = {}
    for name, (shape2, _) in shapes2.items():
        shape3 = shapes3.get(name, (shape2, ""))[0]
        row_axes[name] = _row_axis(shape2, shape3, 2, 3)
    row_sites = frozenset(name for name, axis in row_axes.items() if axis is not None)
    coupled = sorted(name for name, axis in row_axes.items() if axis == -1)
    guides = dict(row_guides or {})
    local_axes = {
        name: axis
        for name in [*latent, *guides]
        if (axis := row_axes.get(name)) is not None and axis >= 0
    }
    local = tuple(local_axes)
    row_specs = tuple(
        RowLatentSpec(name, axis, guides[name][0] if name in guides else DRAWS)
        for name, axis in local_axes.items()
    )
    global_draws = {k: v for k, v in latent.items() if k not in local}
    kinds = {
        name: "observed" if info["is_observed"] else "latent"
        for name, info in sites2.items()
        if info["type"] == "sample"
    }
    global_latents = tuple(
        name
        for name, kind in kinds.items()
        if kind == "latent"
        and row_axes.get(name) is None
        and name not in latent
        and name not in guides
    )
    sample_axes = {name: row_axes.get(name) for name in kinds}
    site_shapes = {name: _full_shape(shapes2[name][0], sample_axes[name], n_rows) for name in kinds}
    row_intervention, shared_intervention = split_intervention(
        intervention, sites=sample_axes, n_rows=n_rows, shapes=site_shapes
    )
    do_axes = tuple(
        sorted(
            (name, pos)
            for name, pos in intervention_row_axes(
                intervention, sites=sample_axes, n_rows=n_rows, shapes=site_shapes
            ).items()
            if pos
        )
    )
    missing = [name for name in spec.return_sites if name not in shapes2]
    if missing and strict_sites:
        raise KeyError(
            f"Unknown return site(s) {missing}; the kernel's sites in this call are "
            f"{sorted(shapes2)}."
        )

    reason = None
    if coupled:
        reason = f"site(s) {coupled} change shape with the number of rows in an irregular way"
    checked = reason is not None or check_split
    if reason is None and check_split:
        reason = _check_split(
            dataclasses.replace(
                spec, global_latents=global_latents, row_latents=row_specs, row_do_axes=do_axes
            ),
            n_rows,
            row_args,
            shared_args,
            global_draws,
            row_intervention,
            shared_intervention,
            _ProbeRows(latent, guides),
            row_axes,
        )

    outputs = []
    for name in spec.return_sites:
        if name not in shapes2:
            continue
        axis = row_axes.get(name)
        shape2, dtype = shapes2[name]
        if spec.kind == LOG_LIKELIHOOD:
            dtype = "float32"
        shape = list(shape2)
        if axis is not None and axis >= 0:
            shape[axis] = n_rows
        outputs.append(
            SiteInfo(
                name=name, row_axis=axis if axis != -1 else None, shape=tuple(shape), dtype=dtype
            )
        )
    return ForwardPlan(
        path=ROWS if reason is None else FULL,
        global_latents=global_latents,
        row_intervention_sites=tuple(sorted(row_intervention)),
        row_intervention_axes=do_axes,
        sample_sites=tuple(kinds),
        outputs=tuple(outputs),
        row_sites=row_sites,
        local_latents=local,
        row_latents=row_specs,
        reason=reason,
        split_checked=checked,
        matmul_flops_per_row=max(0.0, probe3.matmul_flops - probe2.matmul_flops),
    )


class _ProbeRows:
    """The probe rows' values of per-row latents (one draw), rows leading.

    Args:
        latent: Latent draws (per-row sites among them).
        guides: Per-row sites drawn from a guide: ``(kind, parameters by role)``.
    """

    def __init__(
        self, latent: Mapping[str, Any], guides: Mapping[str, tuple[str, Mapping[str, Any]]]
    ) -> None:
        self.latent = latent
        self.guides = guides

    def values(
        self, specs: tuple[RowLatentSpec, ...], index: np.ndarray
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Return ``(draw values, guide parameters)`` of the rows ``index``, rows leading."""
        draws, params = {}, {}
        n = len(index)
        for spec in specs:
            if spec.kind == DRAWS:
                # a probe reads its few rows once: nothing is kept for a next read
                draws[spec.name] = block_draws(
                    self.latent[spec.name], spec.row_axis, 0, 1, index, 1, n, window_bytes=0
                )[0]
            else:
                params[spec.name] = block_params(self.guides[spec.name][1], spec.row_axis, index, n)
        return draws, params


def _check_split(
    spec: PassSpec,
    n_rows: int,
    row_args: Mapping[str, Any],
    shared_args: Mapping[str, Any],
    latent: Mapping[str, Any],
    row_intervention: Mapping[str, Any],
    shared_intervention: Mapping[str, Any],
    row_latent: _ProbeRows | None = None,
    row_axes: Mapping[str, int | None] | None = None,
) -> str | None:
    """Return ``None`` if splitting five probe rows 2 + 3 changes nothing, else why not.

    The three runs (whole, first two rows, last three) are one compiled
    program, with the probe rows as its arguments. Per-row latents take the
    probe rows' values (one draw), as a block of those rows would.
    """
    import jax

    from dopax.kernel.tracing import TRACE_LOCK
    from dopax.sampling.forward import restore_row_axes, run_trace

    index = _probe_index(n_rows, 5)
    rows = {k: _take_rows(v, index) for k, v in row_args.items()}
    row_do = {k: _take_rows(v, index) for k, v in row_intervention.items()}
    latent0 = {k: np.asarray(read_rows(v, 0, 1))[0] for k, v in latent.items()}
    row_values, row_params = (
        ({}, {}) if row_latent is None else row_latent.values(spec.row_latents, index)
    )
    row_axes = dict(row_axes or {})
    words = jax.device_put(np.asarray([0x9E3779B9, _PROBE_KEY], np.uint32))

    def run(data: tuple[Any, ...], block: slice, offset: int) -> dict[str, tuple[Any, Any]]:
        rows, row_do, latent0, shared_args, shared_intervention, values, params = data
        block_do = restore_row_axes(spec, {k: v[block] for k, v in row_do.items()})
        intervention = {**shared_intervention, **block_do}
        first_do = restore_row_axes(spec, {k: v[0:2] for k, v in row_do.items()})
        anchor_do = {**shared_intervention, **first_do}
        latent_d = dict(latent0)
        if spec.global_latents:
            anchor = {**shared_args, **{k: v[0:2] for k, v in rows.items()}}
            anchor_trace = run_trace(spec, words, 0, latent_d, anchor, anchor_do)
            latent_d.update({n: anchor_trace[n]["value"] for n in spec.global_latents})
        args = {**shared_args, **{k: v[block] for k, v in rows.items()}}
        rows_fn = None
        if spec.row_latents:
            rows_fn = substitute_fn(
                spec.row_latents,
                {k: v[block] for k, v in values.items()},
                jax.tree.map(lambda v: v[block], params),
                words,
                offset,
            )
        trace = run_trace(spec, words, offset, latent_d, args, intervention, rows_fn)
        out = {}
        for name, site in trace.items():
            if site["type"] not in ("sample", "deterministic"):
                continue
            fn = site["fn"] if site["type"] == "sample" else None
            out[name] = (jnp.asarray(site["value"]), fn)
        return out

    def depends(name: str) -> str:
        fns = (whole[name][1], head[name][1], tail[name][1])
        if fns[0] is not None and _same_distribution(*fns, axis=row_axes.get(name)):
            return (
                f"site {name!r} ({type(fns[0]).__name__}) draws values that depend on which "
                "rows share its batch: its sampler does not give each row its own random stream"
            )
        return (
            f"the value of site {name!r} depends on which rows share its batch "
            "(the kernel couples rows)"
        )

    # The check is about the kernel's structure, not the data's values: like the
    # compiled pass, it runs traced, where the rows are abstract and NumPyro's
    # argument validation has no concrete value to check (no process-wide switch
    # is flipped, so other threads' calls are untouched); a NaN or an
    # out-of-support value in the first rows decides nothing. The kernel failing
    # on the five rows together is about the data (e.g. an input of the wrong
    # shape): that error is the call's.
    data = (
        rows,
        row_do,
        latent0,
        dict(shared_args),
        dict(shared_intervention),
        row_values,
        row_params,
    )
    pieces = ((slice(0, 5), 0), (slice(0, 2), 0), (slice(2, 5), 2))

    def split_runs(d: tuple[Any, ...]) -> list[dict[str, tuple[Any, Any]]]:
        return [run(d, block, offset) for block, offset in pieces]

    with TRACE_LOCK:
        try:
            whole, head, tail = jax.device_get(jax.jit(split_runs)(data))
        except Exception as err:
            jax.jit(lambda d: run(d, *pieces[0]))(data)  # the rows together: the call's error
            return f"the kernel could not run on a few rows alone ({type(err).__name__}: {err})"
    for name, (value, _) in whole.items():
        if name not in head or name not in tail:
            return f"site {name!r} appears only for some batch sizes"
        verdict = _split_agrees(value, head[name][0], tail[name][0], row_axes.get(name))
        if verdict is None:
            return f"site {name!r} has no axis that follows the rows in every split"
        if not verdict:
            return depends(name)
    # a discrete site may draw the same values from another distribution: its
    # parameters must agree too (factors, whose values are empty, excepted)
    for name, (_, fn) in whole.items():
        if fn is None or isinstance(fn, dist.Unit):
            continue
        if not _same_distribution(fn, head[name][1], tail[name][1], row_axes.get(name)):
            return (
                f"the distribution of site {name!r} depends on which rows share its batch "
                "(the kernel couples rows)"
            )
    return None


def _rows_axis(
    whole: np.ndarray, head: np.ndarray, tail: np.ndarray, hint: int | None
) -> int | None:
    """Return the axis along which five probe rows split into 2 + 3, or ``None``."""

    def fits(axis: int) -> bool:
        rest = [i for i in range(whole.ndim) if i != axis]
        return (
            whole.shape[axis] == 5
            and head.shape[axis] == 2
            and tail.shape[axis] == 3
            and all(whole.shape[i] == head.shape[i] == tail.shape[i] for i in rest)
        )

    if not whole.ndim == head.ndim == tail.ndim:
        return None
    if hint is not None and 0 <= hint < whole.ndim and fits(hint):
        return hint
    axes = [a for a in range(whole.ndim) if fits(a)]
    return axes[0] if len(axes) == 1 else None


def _split_agrees(whole: Any, head: Any, tail: Any, axis: int | None = None) -> bool | None:
    """Whether a value on five probe rows equals its values on rows 0..1 and 2..4.

    (Two rows at least in every part: a kernel may squeeze away a row axis of
    length one.) The rows run along ``axis`` (the site's row axis, from the
    probes) or else the one axis of length 5 that splits into 2 and 3.

    ``None`` when no axis follows the rows.
    """
    whole, head, tail = np.asarray(whole), np.asarray(head), np.asarray(tail)
    if whole.ndim == 0 or whole.shape == head.shape == tail.shape:
        return _agree(whole, head) and _agree(whole, tail)
    found = _rows_axis(whole, head, tail, axis)
    if found is None:
        return None
    return _agree(whole, np.concatenate([head, tail], axis=found))


def _same_distribution(whole: Any, head: Any, tail: Any, axis: int | None = None) -> bool:
    """Whether a site's distribution has the same parameters whole and split."""
    leaves = [jax.tree.leaves(fn) for fn in (whole, head, tail)]
    if type(whole) is not type(head) or not len(leaves[0]) == len(leaves[1]) == len(leaves[2]):
        return False
    return all(_split_agrees(w, h, t, axis) for w, h, t in zip(*leaves, strict=True))
