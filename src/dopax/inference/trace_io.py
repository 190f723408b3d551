"""Writing segments to a streamed MCMC trace and reading its state back.

Functions on an open trace's root group; :class:`~dopax.inference.trace.ZarrTrace`
wraps them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr
import zarr
from zarr.abc.store import Store
from zarr.core.sync import sync

from dopax.inference.trace_layout import (
    ARRAY_CONFIG,
    CHAIN_KEY,
    FORMAT_VERSION,
    PHASE_GROUPS,
    PROGRESS_ATTR,
    SAMPLE_STATS,
    SAMPLING_STATE,
    UNCONSTRAINED_POSTERIOR,
    TraceLayout,
    state_name,
)
from dopax.output.schema import CHAIN, DRAW, POSTERIOR

__all__ = [
    "DIGEST_KEY",
    "differences",
    "open_arrays",
    "open_tree",
    "provenance_attrs",
    "read_chain_keys",
    "read_group",
    "read_state",
    "resize_draws",
    "settings_for",
    "state_digest",
    "state_meta",
    "stored_group",
    "write_segment",
]


def open_arrays(root: zarr.Group) -> dict[str, zarr.Array]:
    """Every array of the trace, by ``group/name``, writing every chunk it is given.

    (``write_empty_chunks`` is a setting of the array object, not of the
    stored array: without it Zarr skips a chunk equal to the fill value, such
    as a segment without divergences, and a missing chunk would no longer
    tell damage from data.)
    """
    out: dict[str, zarr.Array] = {}
    for group_name, node in root.groups():
        for name, arr in node.arrays():
            out[f"{group_name}/{name}"] = arr.with_config(ARRAY_CONFIG)
    return out


def write_segment(
    root: zarr.Group,
    arrays: Mapping[str, zarr.Array],
    settings: Mapping[str, Any],
    chains: slice,
    start: int,
    records: Mapping[str, Mapping[str, np.ndarray]],
    state_leaves: Sequence[np.ndarray],
    progress: dict[str, list[Any]],
) -> None:
    """Write one segment of ``chains``, then move their marker.

    The draws and statistics go first, then the chains' state into the slot
    the marker does not point at, and last the marker itself (one write of
    the root metadata document).

    Args:
        root: The trace's root group, open for writing.
        arrays: The trace's arrays (:func:`open_arrays`).
        settings: The trace's settings (root attribute ``dopax_trace``).
        chains: The chains the segment ran.
        start: The first iteration of the segment (warm-up included).
        records: ``{"posterior"|"sample_stats"|"unconstrained_posterior":
            {name: (chains, n, ...)}}``.
        state_leaves: The chains' state at the segment's end, one array
            ``(chains, ...)`` per leaf.
        progress: The marker; updated in place once the writes are done.
    """
    num_warmup = int(settings["num_warmup"])
    warmup = start < num_warmup
    first = next(iter(records[POSTERIOR].values()), None)
    if first is None:
        first = next(iter(records[SAMPLE_STATS].values()))
    n = int(first.shape[1])
    offset = start if warmup else start - num_warmup
    post_name, stats_name, unc_name = PHASE_GROUPS["warmup" if warmup else "sample"]
    writes: list[tuple[zarr.Array, tuple[Any, ...], np.ndarray]] = []
    if not warmup or settings["save_warmup"]:
        targets = {POSTERIOR: post_name, SAMPLE_STATS: stats_name}
        if settings["include_transformed"]:
            targets[UNCONSTRAINED_POSTERIOR] = unc_name
        for kind, group in targets.items():
            for name, value in records[kind].items():
                writes.append(
                    (arrays[f"{group}/{name}"], (chains, slice(offset, offset + n)), value)
                )
    sync(_set_all(writes))
    slots = progress["slot"]
    chain_ids = range(*chains.indices(len(slots)))
    new_slot = {c: 1 - int(slots[c]) for c in chain_ids}
    state_writes = []
    per_chain: dict[int, list[np.ndarray]] = {c: [] for c in chain_ids}
    for i, leaf in enumerate(state_leaves):
        arr = arrays[f"{SAMPLING_STATE}/{state_name(i)}"]
        for j, c in enumerate(chain_ids):
            value = np.asarray(leaf[j], dtype=arr.dtype)
            per_chain[c].append(value)
            state_writes.append((arr, (new_slot[c], c), value))
    sync(_set_all(state_writes))
    digests = progress.setdefault(DIGEST_KEY, [None] * len(slots))
    for c in chain_ids:
        progress["iterations"][c] = start + n
        slots[c] = new_slot[c]
        digests[c] = state_digest(per_chain[c])
    root.attrs.update({PROGRESS_ATTR: progress})


#: Key of the progress marker holding the digest of each chain's state in its slot.
DIGEST_KEY = "state_sha256"


def state_digest(leaves: Sequence[np.ndarray]) -> str:
    """SHA-256 of one chain's state: each leaf's dtype, shape and bytes, in order."""
    h = hashlib.sha256()
    for leaf in leaves:
        value = np.asarray(leaf)
        h.update(f"{value.dtype.str}{value.shape};".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


async def _set_all(writes: Sequence[tuple[zarr.Array, tuple[Any, ...], np.ndarray]]) -> None:
    await asyncio.gather(
        *(arr.async_array.setitem(selection, value) for arr, selection, value in writes)
    )


def read_state(root: zarr.Group, chain: int, slot: int) -> list[np.ndarray]:
    """The leaves of ``chain``'s state in ``slot`` (key leaves as key data)."""
    node = root[SAMPLING_STATE]
    assert isinstance(node, zarr.Group)
    count = len(list(node.attrs["leaves"]))  # type: ignore[arg-type]
    out = []
    for i in range(count):
        arr = node[state_name(i)]
        assert isinstance(arr, zarr.Array)
        out.append(np.asarray(arr[slot, chain]))
    return out


def state_meta(root: zarr.Group) -> tuple[list[str], list[str | None]]:
    """The state's leaf paths, and the PRNG implementation of each key leaf (else None)."""
    node = root[SAMPLING_STATE]
    assert isinstance(node, zarr.Group)
    paths = [str(p) for p in node.attrs["leaves"]]  # type: ignore[union-attr]
    impls: list[str | None] = []
    for i in range(len(paths)):
        impl = node[state_name(i)].attrs.get("key_impl")
        impls.append(None if impl is None else str(impl))
    return paths, impls


def read_chain_keys(root: zarr.Group) -> tuple[np.ndarray, str]:
    """The key data of each chain's starting key, and their PRNG implementation."""
    arr = root[f"{SAMPLING_STATE}/{CHAIN_KEY}"]
    assert isinstance(arr, zarr.Array)
    return np.asarray(arr[...]), str(arr.attrs["key_impl"])


def read_group(root: zarr.Group, group: str) -> dict[str, np.ndarray]:
    """The per-draw variables of ``group`` as ``(chain, draw, ...)`` arrays."""
    return {name: np.asarray(arr[...]) for name, arr in stored_group(root, group).items()}


def stored_group(root: zarr.Group, group: str) -> dict[str, zarr.Array[Any]]:
    """The per-draw variables of ``group``: their ``(chain, draw, ...)`` arrays, unread."""
    node = root[group]
    assert isinstance(node, zarr.Group)
    return {
        name: arr
        for name, arr in node.arrays()
        if name not in (CHAIN, DRAW) and len(arr.shape) >= 2
    }


def differences(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """What differs between two fingerprints, one line per setting: ``section 'key' (...)``."""
    out: list[str] = []
    for section in sorted(set(recorded) | set(now)):
        old, new = recorded.get(section, {}), now.get(section, {})
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                was, now_ = _short(old.get(key)), _short(new.get(key))
                out.append(f"{section} {key!r} (trace: {was}, now: {now_})")
    return out


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def open_tree(store: Store, settings: Mapping[str, Any], done: int) -> xr.DataTree:
    """The trace as a lazy DataTree, without ``_sampling_state``.

    Args:
        store: The trace's store (read-only).
        settings: The trace's settings.
        done: Iterations every chain has finished; per-draw groups are cut there.
    """
    num_warmup = int(settings["num_warmup"])
    total = num_warmup + int(settings["num_samples_total"])
    tree = xr.open_datatree(store, engine="zarr", consolidated=True, chunks={})  # type: ignore[arg-type]
    nodes: dict[str, xr.Dataset] = {}
    for path, node in tree.subtree_with_keys:
        name = path.split("/")[0]
        if name == SAMPLING_STATE:
            continue
        ds = node.to_dataset(inherit=False)
        if done < total and DRAW in ds.dims:
            if name in PHASE_GROUPS["warmup"]:
                ds = ds.isel({DRAW: slice(0, min(done, num_warmup))})
            elif name in PHASE_GROUPS["sample"]:
                ds = ds.isel({DRAW: slice(0, max(0, done - num_warmup))})
        nodes["/" if path == "." else f"/{path}"] = ds
    return xr.DataTree.from_dict(nodes)


def resize_draws(root: zarr.Group, num_draws: int) -> None:
    """Resize every posterior-phase array (and its ``draw`` coordinate) to ``num_draws``."""
    for group in PHASE_GROUPS["sample"]:
        if group not in root:
            continue
        node = root[group]
        assert isinstance(node, zarr.Group)
        for name, arr in node.arrays():
            if name == DRAW:
                arr.resize((num_draws,))
                arr.with_config(ARRAY_CONFIG)[:] = np.arange(num_draws, dtype=np.int64)
            elif name != CHAIN and len(arr.shape) >= 2:
                arr.resize((arr.shape[0], num_draws, *arr.shape[2:]))


def provenance_attrs() -> dict[str, str]:
    """ArviZ 1.0's provenance attributes, and the JAX version."""
    import jax
    import numpyro

    from dopax._version import __version__

    return {
        "creation_library": "dopax",
        "creation_library_version": __version__,
        "inference_library": "numpyro",
        "inference_library_version": numpyro.__version__,
        "jax_version": jax.__version__,
    }


def settings_for(
    layout: TraceLayout, draws_per_chunk: int, include_transformed: bool, save_warmup: bool
) -> dict[str, Any]:
    """The trace's settings attribute (:data:`TRACE_ATTR`) for a new run."""
    return {
        "format": FORMAT_VERSION,
        "draws_per_chunk": draws_per_chunk,
        "include_transformed": include_transformed,
        "save_warmup": save_warmup,
        "num_chains": layout.num_chains,
        "num_warmup": layout.num_warmup,
        "num_samples": layout.num_samples,
        "num_samples_total": layout.num_samples,
        "fingerprint": layout.fingerprint,
    }
