"""Planning a forward pass: which sites carry rows, and whether rows may be split.

Pure: it runs the kernel on tiny probes, never on the user's full data.

* A site's *row axis* is the one axis whose length follows the number of rows
  (probed at 2 and 3 rows, so no shape coincidence with the data can fool it).
* A latent site with a row axis that is also in the posterior is a *per-row
  latent* (local latent): in-sample predictions need all rows together.
* Whether splitting rows into batches leaves every value unchanged is then
  checked directly: the kernel runs on five probe rows at once and split 2 + 3,
  and the results must agree. No probe has a single row: a kernel may drop the
  row axis of a one-row batch (e.g. a network ending in ``.squeeze()``), and
  the engine never runs such a batch when rows are split (it pads to two).
  Kernels that couple rows (e.g. standardise ``X`` inside the model) or whose
  random sites do not lead with the row axis fail this check and run with all
  rows together (the draw-axis path).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dopax.sampling.forward import LOG_LIKELIHOOD, PassSpec
from dopax.sampling.prepare import read_rows, split_intervention
from dopax.sampling.probe import probe_kernel

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
        global_latents: Latent sites without a row axis that the call does not
            supply (drawn once per draw on the anchor row).
        row_intervention_sites: Intervened sites given one value per row.
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
    global_latents: tuple[str, ...] = ()
    row_intervention_sites: tuple[str, ...] = ()
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
    *,
    n_rows: int,
    row_args: Mapping[str, Any],
    shared_args: Mapping[str, Any],
    latent: Mapping[str, Any],
    intervention: Mapping[str, Any] | None,
    strict_sites: bool = True,
    check_split: bool = True,
) -> ForwardPlan:
    """Plan a forward pass by probing the kernel on a few rows.

    Running the kernel split (the one probe that compiles and runs) is needed
    only before rows are split; a call whose rows all run in one block may
    skip it (``check_split=False``) and get a plan with ``split_checked``
    false.

    Args:
        spec: The static pass description.
        n_rows: Number of rows of the call.
        row_args: Kernel arguments with a leading row axis (full length).
        shared_args: Array kernel arguments used whole.
        latent: Latent values to substitute, leading axis draws (may be empty).
        intervention: Site name to value (validated here), or ``None``.
        strict_sites: Raise for a return site the pass lacks; otherwise leave
            it out of the plan's outputs (a site of another branch of the
            kernel, e.g. one that exists only when the output is observed).
        check_split: Whether to run the kernel split when nothing else
            decides the path.

    Returns:
        The plan.

    Raises:
        ScenarioError: For an invalid intervention.
        KeyError: For a return site the kernel lacks (message lists the sites).
    """
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
    local = tuple(name for name in latent if name in row_sites)
    kinds = {
        name: "observed" if info["is_observed"] else "latent"
        for name, info in sites2.items()
        if info["type"] == "sample"
    }
    global_latents = tuple(
        name
        for name, kind in kinds.items()
        if kind == "latent" and row_axes.get(name) is None and name not in latent
    )
    sample_axes = {name: row_axes.get(name) for name in kinds}
    row_intervention, shared_intervention = split_intervention(
        intervention,
        sites=sample_axes,
        n_rows=n_rows,
        shapes={name: _full_shape(shapes2[name][0], sample_axes[name], n_rows) for name in kinds},
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
    if reason is None and local:
        reason = (
            f"the posterior holds per-row latent site(s) {list(local)}, which tie each "
            "draw to all rows"
        )
    checked = reason is not None or check_split
    if reason is None and check_split:
        reason = _check_split(
            dataclasses.replace(spec, global_latents=global_latents),
            n_rows,
            row_args,
            shared_args,
            latent,
            row_intervention,
            shared_intervention,
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
        sample_sites=tuple(kinds),
        outputs=tuple(outputs),
        row_sites=row_sites,
        local_latents=local,
        reason=reason,
        split_checked=checked,
        matmul_flops_per_row=max(0.0, probe3.matmul_flops - probe2.matmul_flops),
    )


def _check_split(
    spec: PassSpec,
    n_rows: int,
    row_args: Mapping[str, Any],
    shared_args: Mapping[str, Any],
    latent: Mapping[str, Any],
    row_intervention: Mapping[str, Any],
    shared_intervention: Mapping[str, Any],
) -> str | None:
    """Return ``None`` if splitting five probe rows 2 + 3 changes nothing, else why not.

    The three runs (whole, first two rows, last three) are one compiled
    program, with the probe rows as its arguments.
    """
    import jax
    from numpyro import handlers

    from dopax.kernel.tracing import TRACE_LOCK
    from dopax.sampling.rng import RowKeySeed

    index = _probe_index(n_rows, 5)
    rows = {k: _take_rows(v, index) for k, v in row_args.items()}
    row_do = {k: _take_rows(v, index) for k, v in row_intervention.items()}
    latent0 = {k: np.asarray(read_rows(v, 0, 1))[0] for k, v in latent.items()}
    words = jax.device_put(np.asarray([0x9E3779B9, _PROBE_KEY], np.uint32))

    def run(data: tuple[Any, ...], block: slice, offset: int) -> dict[str, tuple[Any, Any]]:
        rows, row_do, latent0, shared_args, shared_intervention = data
        intervention = {**shared_intervention, **{k: v[block] for k, v in row_do.items()}}
        anchor_do = {**shared_intervention, **{k: v[0:2] for k, v in row_do.items()}}
        latent_d = dict(latent0)
        if spec.global_latents:
            anchor = {**shared_args, **{k: v[0:2] for k, v in rows.items()}}
            anchor_trace = _trace(anchor, anchor_do, latent_d, 0)
            latent_d.update({n: anchor_trace[n]["value"] for n in spec.global_latents})
        args = {**shared_args, **{k: v[block] for k, v in rows.items()}}
        trace = _trace(args, intervention, latent_d, offset)
        out = {}
        for name, site in trace.items():
            if site["type"] not in ("sample", "deterministic"):
                continue
            fn = site["fn"] if site["type"] == "sample" else None
            out[name] = (jnp.asarray(site["value"]), fn)
        return out

    def _trace(
        args: Mapping[str, Any], intervention: Mapping[str, Any], lat: Mapping[str, Any], off: int
    ) -> Any:
        model = spec.kernel
        if intervention:
            model = handlers.do(model, data=dict(intervention))
        if lat:
            model = handlers.substitute(model, data=dict(lat))
        seeded = RowKeySeed(model, words, off)
        return handlers.trace(seeded).get_trace(**args, **dict(spec.static))

    def depends(name: str) -> str:
        fns = (whole[name][1], head[name][1], tail[name][1])
        if fns[0] is not None and _same_distribution(*fns):
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
    data = (rows, row_do, latent0, dict(shared_args), dict(shared_intervention))
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
        verdict = _split_agrees(value, head[name][0], tail[name][0])
        if verdict is None:
            return f"site {name!r} does not lead with the row axis"
        if not verdict:
            return depends(name)
    return None


def _split_agrees(whole: Any, head: Any, tail: Any) -> bool | None:
    """Whether a value on five probe rows equals its values on rows 0..1 and 2..4.

    (Two rows at least in every part: a kernel may squeeze away a row axis of
    length one.)

    ``None`` when the shapes do not lead with the row axis.
    """
    whole, head, tail = np.asarray(whole), np.asarray(head), np.asarray(tail)
    if whole.ndim == 0 or whole.shape == head.shape == tail.shape:
        return _agree(whole, head) and _agree(whole, tail)
    if whole.shape[0] != 5 or head.shape[0] != 2 or tail.shape[0] != 3:
        return None
    return _agree(whole, np.concatenate([head, tail], axis=0))


def _same_distribution(whole: Any, head: Any, tail: Any) -> bool:
    """Whether a site's distribution has the same parameters whole and split."""
    leaves = [jax.tree.leaves(fn) for fn in (whole, head, tail)]
    if type(whole) is not type(head) or not len(leaves[0]) == len(leaves[1]) == len(leaves[2]):
        return False
    return all(_split_agrees(w, h, t) for w, h, t in zip(*leaves, strict=True))
