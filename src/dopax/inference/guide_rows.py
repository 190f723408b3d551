"""Per-row latent sites of a fitted guide: which a call draws block by block, and the rest.

A guide that factorises over rows gives each row of a per-row latent site
its own parameters: ``AutoNormal`` a location and scale in unconstrained
space (``{site}_{prefix}_loc``, ``{site}_{prefix}_scale``), ``AutoDelta`` a
point value (``{site}_{prefix}_loc``). Storing draws x rows of such a site
would cost ``num_samples`` times its parameters; instead the fit keeps the
draws of the global sites only, and every in-sample call draws the per-row
sites for each block of rows from the parameters, with the call's key
(:mod:`dopax.sampling.row_latent`), so draws do not depend on block sizes.

A site is *per-row* here when one of its plates is as long as the data the
guide was fitted on (the row plate; with a subsampled plate, its full size).
Guides that couple a site's rows (``AutoMultivariateNormal``,
``AutoLowRankMultivariateNormal``, normalising flows, and every guide that
flattens all sites into one vector) draw the site as a whole: its draws
are stored, and in-sample calls run all rows together, with a warning that
names the guide.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions.transforms import biject_to
from numpyro.infer.autoguide import AutoDelta, AutoGuide, AutoGuideList, AutoNormal

from dopax.sampling.row_latent import (
    COUPLED,
    DELTA,
    NORMAL,
    RowGuide,
    guide_param_names,
)

__all__ = ["draw_global_sites", "guide_parts", "row_guides"]


def guide_parts(guide: Any) -> list[Any]:
    """Return the automatic guides a guide is made of (an ``AutoGuideList``'s parts, flattened).

    Args:
        guide: A guide.
    """
    if isinstance(guide, AutoGuideList):
        return [p for part in guide for p in guide_parts(part)]
    return [guide]


def _latent_sites(part: Any) -> list[str]:
    trace = getattr(part, "prototype_trace", None) or {}
    return [
        name
        for name, site in trace.items()
        if site["type"] == "sample" and not site.get("is_observed")
    ]


def _per_row(part: Any, name: str, n_rows: int) -> bool:
    """Whether site ``name`` of a guide lies in a plate as long as the data (the row plate)."""
    site = part.prototype_trace[name]
    sizes = getattr(part, "_prototype_frame_full_sizes", {})
    return any(sizes.get(frame.name, frame.size) == n_rows for frame in site["cond_indep_stack"])


def _kind(part: Any) -> str:
    if isinstance(part, AutoNormal) and not _overrides(part):
        return NORMAL
    if isinstance(part, AutoDelta) and not _overrides(part):
        return DELTA
    return COUPLED


def _overrides(part: Any) -> bool:
    """Whether a subclass of a factorising guide changes how it draws (then it is not trusted)."""
    base = AutoNormal if isinstance(part, AutoNormal) else AutoDelta
    return any(
        getattr(type(part), attr) is not getattr(base, attr)
        for attr in ("__call__", "sample_posterior")
    )


def row_guides(guide: Any, n_rows: int) -> dict[str, RowGuide]:
    """Return the per-row latent sites of a fitted automatic guide and how each is drawn.

    Guides that are not automatic (a hand-written guide function) draw their
    sites whole, as NumPyro's ``Predictive`` does: they are not listed.

    Args:
        guide: The fitted guide (its prototype trace set up).
        n_rows: Rows of the data it was fitted on.
    """
    out: dict[str, RowGuide] = {}
    for part in guide_parts(guide):
        if not isinstance(part, AutoGuide) or getattr(part, "prototype_trace", None) is None:
            continue
        kind = _kind(part)
        for name in _latent_sites(part):
            if not _per_row(part, name, n_rows):
                continue
            if kind == COUPLED:
                out[name] = RowGuide(COUPLED, type(part).__name__)
            else:
                loc, scale = guide_param_names(kind, name, part.prefix)
                out[name] = RowGuide(kind, type(part).__name__, loc, scale)
    return out


def _site_tag(name: str) -> int:
    import zlib

    return zlib.crc32(name.encode("utf-8"))


def _draw_factorised(
    part: Any,
    key: jax.Array,
    params: Mapping[str, Any],
    num_samples: int,
    names: Iterable[str],
) -> dict[str, np.ndarray]:
    """Draw sites of an ``AutoNormal`` or ``AutoDelta`` from its parameters, site by site."""
    kind = _kind(part)
    out = {}
    for name in names:
        loc_name, scale_name = guide_param_names(kind, name, part.prefix)
        loc = jnp.asarray(params[str(loc_name)])
        if kind == DELTA:
            out[name] = np.asarray(jnp.broadcast_to(loc, (num_samples, *loc.shape)))
            continue
        scale = jnp.asarray(params[str(scale_name)])
        eps = jax.random.normal(
            jax.random.fold_in(key, _site_tag(name)), (num_samples, *loc.shape), loc.dtype
        )
        support = part.prototype_trace[name]["fn"].support
        out[name] = np.asarray(biject_to(support)(loc + scale * eps))
    return out


def draw_global_sites(
    guide: Any,
    key: jax.Array,
    params: Mapping[str, Any],
    num_samples: int,
    per_call: Iterable[str],
) -> dict[str, np.ndarray]:
    """Draw every latent site of a guide but those drawn per call (``per_call``).

    Parts of a guide list that hold no per-call site draw as NumPyro's own
    ``sample_posterior`` does; a part that holds some draws its other sites
    from its parameters (``loc + scale * eps`` mapped to the site's support,
    or the point value), never materialising draws x rows of the per-row
    sites.

    Args:
        guide: The fitted guide.
        key: PRNG key.
        params: The guide's parameters.
        num_samples: Draws to take.
        per_call: Sites that calls draw block by block (left out).
    """
    skip = set(per_call)
    out: dict[str, np.ndarray] = {}
    for i, part in enumerate(guide_parts(guide)):
        part_key = jax.random.fold_in(key, i)
        names = _latent_sites(part)
        if not skip.intersection(names):
            drawn = part.sample_posterior(part_key, dict(params), sample_shape=(num_samples,))
            out.update({k: np.asarray(v) for k, v in drawn.items() if k in names})
            continue
        out.update(
            _draw_factorised(
                part, part_key, params, num_samples, [n for n in names if n not in skip]
            )
        )
    return out
