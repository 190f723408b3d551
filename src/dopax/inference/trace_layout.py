"""The layout of a streamed MCMC trace (see :class:`~dopax.inference.trace.ZarrTrace`).

A trace is a Zarr v3 hierarchy laid out like an ArviZ ``InferenceData``:

``posterior``, ``sample_stats``
    Draws of the latent sites and the sampler's statistics, arrays
    ``(chain, draw, ...)`` chunked ``(1, draws_per_chunk, ...)``; a site
    whose chunk would exceed :data:`DRAW_CHUNK_BYTES` (a per-row latent of
    many rows) is chunked along its longest axis too, so a block of rows
    reads only its rows' chunks.
``unconstrained_posterior``
    The sampler's own (unconstrained) values, with ``include_transformed``.
``warmup_posterior``, ``warmup_sample_stats``, ``warmup_unconstrained_posterior``
    The same for the warm-up iterations, with ``save_warmup``.
``observed_data``, ``constant_data``
    The observed sites and the other array arguments of the fit.
``_sampling_state``
    Private: every leaf of the sampler state per chain as a plain array
    (``state_000``, ``state_001``, ... in two slots, see below), and the
    per-chain PRNG keys the run started from.

Root attributes carry the provenance (``creation_library``,
``inference_library`` and their versions, ``created_at``, ``dopax_version``),
the run's settings and fingerprint (:data:`TRACE_ATTR`), and the progress
marker (:data:`PROGRESS_ATTR`): iterations done per chain, warm-up included,
and which of the two state slots holds each chain's state. A segment's draws,
statistics and state are written first, the state into the slot the marker
does not point at; only then does the marker move, in one write of the root
metadata document. A run killed at any point therefore leaves the trace at its
last durable segment.

The metadata is consolidated, so ``xarray.open_datatree(path, engine="zarr")``
reads a trace without dopax.

Every chunk is written, even one equal to the fill value, and ends with a
CRC-32C checksum (Zarr's ``crc32c`` codec after ``zstd``): dopax reads a
trace through a store that raises
:class:`~dopax.exceptions.TraceCorruptError` naming the chunk that is
missing or does not match (Zarr alone would read a missing chunk as its fill
value). Traces of format 1 (before checksums, when a chunk equal to the
fill value could be left unwritten) are read as they were written, unchecked.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.codecs
import zarr.errors
from zarr.abc.store import Store
from zarr.core.array_spec import ArrayConfigParams
from zarr.storage import FsspecStore, LocalStore, MemoryStore

from dopax._warn import ignoring
from dopax.output.schema import CHAIN, DRAW, POSITION_ATTRS, POSTERIOR

__all__ = [
    "CONSTANT_DATA",
    "OBSERVED_DATA",
    "PROGRESS_ATTR",
    "SAMPLE_STATS",
    "SAMPLING_STATE",
    "TRACE_ATTR",
    "UNCONSTRAINED_POSTERIOR",
    "WARMUP_POSTERIOR",
    "WARMUP_SAMPLE_STATS",
    "WARMUP_UNCONSTRAINED_POSTERIOR",
    "TraceLayout",
    "consolidate",
    "create_nodes",
    "resolve_store",
]

SAMPLE_STATS = "sample_stats"
OBSERVED_DATA = "observed_data"
CONSTANT_DATA = "constant_data"
UNCONSTRAINED_POSTERIOR = "unconstrained_posterior"
WARMUP_POSTERIOR = "warmup_posterior"
WARMUP_SAMPLE_STATS = "warmup_sample_stats"
WARMUP_UNCONSTRAINED_POSTERIOR = "warmup_unconstrained_posterior"
SAMPLING_STATE = "_sampling_state"

#: Root attribute with the run's settings and fingerprint (JSON).
TRACE_ATTR = "dopax_trace"
#: Root attribute with the progress marker: ``{"iterations": [...], "slot": [...]}``.
PROGRESS_ATTR = "dopax_trace_progress"
#: Version of the layout written here (2: checksums, and every chunk written).
FORMAT_VERSION = 2
#: Codecs of every array: zstd (Zarr's default), then the checksum.
CODECS = (zarr.codecs.ZstdCodec(level=0), zarr.codecs.Crc32cCodec())
#: Array settings: every chunk is written, even one equal to the fill value.
ARRAY_CONFIG: ArrayConfigParams = {"write_empty_chunks": True}

#: The per-draw groups of each phase: (draws, statistics, unconstrained draws).
PHASE_GROUPS = {
    "sample": (POSTERIOR, SAMPLE_STATS, UNCONSTRAINED_POSTERIOR),
    "warmup": (WARMUP_POSTERIOR, WARMUP_SAMPLE_STATS, WARMUP_UNCONSTRAINED_POSTERIOR),
}
SLOTS = 2
CHAIN_KEY = "chain_key"
STATIC_CHUNK_BYTES = 64 * 2**20
#: Largest chunk of a per-draw array (larger ones are cut along their longest axis).
DRAW_CHUNK_BYTES = 2**20
CONSOLIDATED_WARNING = "Consolidated metadata is currently not part"


# ---------------------------------------------------------------------------- stores
def resolve_store(
    store: Any, storage_options: Mapping[str, Any] | None, *, read_only: bool
) -> tuple[Store, str]:
    """Return a Zarr store for a path, URL, store object or ``None``, and a label for messages."""
    if store is None:
        if storage_options:
            raise ValueError("`storage_options` apply to URLs only; the store is in memory.")
        return MemoryStore(), "<memory>"
    if isinstance(store, Store):
        if storage_options:
            raise ValueError("`storage_options` apply to URLs only, not to a zarr Store object.")
        if read_only and not store.read_only:
            try:
                return store.with_read_only(True), str(store)
            except NotImplementedError:
                return store, str(store)
        return store, str(store)
    if isinstance(store, str | os.PathLike):
        text = os.fspath(store)
        if "://" in text:
            scheme, rest = text.split("://", 1)
            if scheme == "file":
                path = Path(rest).expanduser().resolve()
                return LocalStore(path, read_only=read_only), str(path)
            # An unknown scheme raises here (fsspec knows no such protocol).
            fs_store = FsspecStore.from_url(
                text, storage_options=dict(storage_options or {}), read_only=read_only
            )
            return fs_store, text
        if storage_options:
            raise ValueError("`storage_options` apply to URLs only, not to a local path.")
        path = Path(text).expanduser().resolve()
        return LocalStore(path, read_only=read_only), str(path)
    raise TypeError(
        f"`store` must be a path, an fsspec URL, a zarr Store or None; got {type(store).__name__}."
    )


def to_json(value: Any) -> Any:
    """``value`` with NumPy scalars and tuples turned into JSON types."""
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def fill_value(dtype: np.dtype[Any]) -> dict[str, Any]:
    """NaN for floating point (what xarray writes), Zarr's default otherwise."""
    return {"fill_value": np.nan} if dtype.kind == "f" else {}


def draw_chunks(shape: tuple[int, ...], draws_per_chunk: int, itemsize: int) -> tuple[int, ...]:
    """Chunks of one site's ``(chain, draw, *shape)`` array.

    ``draws_per_chunk`` draws of the whole site per chunk, unless that
    exceeds :data:`DRAW_CHUNK_BYTES`: then the site's longest axis (the rows
    of a per-row latent) is cut too, so that reading a block of rows reads
    chunks of about that size, never the site's whole posterior.

    Args:
        shape: The site's shape for one draw.
        draws_per_chunk: Draws per chunk.
        itemsize: Bytes per value.
    """
    inner = list(shape)
    total = draws_per_chunk * int(np.prod(shape, dtype=np.int64)) * itemsize
    if shape and total > DRAW_CHUNK_BYTES:
        axis = int(np.argmax(shape))
        others = total // max(shape[axis], 1)
        inner[axis] = int(max(1, min(shape[axis], DRAW_CHUNK_BYTES // max(others, 1))))
    return (1, draws_per_chunk, *inner)


def row_chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Chunks of a static array: whole rows, at most 64 MiB per chunk."""
    if not shape:
        return ()
    per_row = max(int(np.prod(shape[1:], dtype=np.int64)) * itemsize, 1)
    rows = max(1, min(shape[0], STATIC_CHUNK_BYTES // per_row))
    return (rows, *shape[1:])


# ---------------------------------------------------------------------------- layout
class TraceLayout:
    """What a run stores: chains, iterations, and the variables of each group.

    Built by the sampler driver (:mod:`dopax.inference.segments`) from the
    sampler's first state; the trace creates its arrays from it.

    Args:
        num_chains: Number of chains.
        num_warmup: Warm-up iterations per chain.
        num_samples: Draws per chain.
        posterior: Latent site name to ``(shape, dtype)`` of one draw.
        unconstrained: Unconstrained site name to ``(shape, dtype)`` of one draw.
        stats: Sample statistic name to dtype (one scalar per draw).
        state_leaves: Per leaf of one chain's sampler state: ``(path, shape,
            dtype, key_impl)``; ``key_impl`` names the PRNG implementation of a
            key leaf (stored as its key data) and is ``None`` otherwise.
        chain_keys: Key data of each chain's starting key, ``(chain, ...)``.
        key_impl: PRNG implementation of the chain keys.
        observed: Observed site name to its data.
        constant: Other array argument name to its data.
        fingerprint: Data, kernel and sampler fingerprint (JSON).
    """

    def __init__(
        self,
        *,
        num_chains: int,
        num_warmup: int,
        num_samples: int,
        posterior: Mapping[str, tuple[tuple[int, ...], str]],
        unconstrained: Mapping[str, tuple[tuple[int, ...], str]],
        stats: Mapping[str, str],
        state_leaves: Sequence[tuple[str, tuple[int, ...], str, str | None]],
        chain_keys: np.ndarray,
        key_impl: str,
        observed: Mapping[str, np.ndarray],
        constant: Mapping[str, np.ndarray],
        fingerprint: Mapping[str, Any],
    ) -> None:
        self.num_chains = int(num_chains)
        self.num_warmup = int(num_warmup)
        self.num_samples = int(num_samples)
        self.posterior = dict(posterior)
        self.unconstrained = dict(unconstrained)
        self.stats = dict(stats)
        self.state_leaves = list(state_leaves)
        self.chain_keys = np.asarray(chain_keys)
        self.key_impl = key_impl
        self.observed = dict(observed)
        self.constant = dict(constant)
        self.fingerprint = to_json(fingerprint)


def state_name(index: int) -> str:
    return f"state_{index:03d}"


def consolidate(store: Store) -> None:
    """Consolidate the metadata (Zarr's warning that v3 has no such standard is expected)."""
    with ignoring(CONSOLIDATED_WARNING, zarr.errors.ZarrUserWarning):
        zarr.consolidate_metadata(store, zarr_format=3)


async def create_nodes(
    store: Store,
    layout: TraceLayout,
    root_attrs: Mapping[str, Any],
    *,
    draws_per_chunk: int,
    include_transformed: bool,
    save_warmup: bool,
) -> None:
    """Create the groups and arrays of a new trace, and write its static data.

    Args:
        store: The empty store.
        layout: What the run stores.
        root_attrs: Root attributes (provenance).
        draws_per_chunk: Draws per chunk of the per-draw arrays.
        include_transformed: Whether to lay out the unconstrained groups.
        save_warmup: Whether to lay out the warm-up groups.
    """
    api = zarr.api.asynchronous
    root = await api.create_group(store=store, zarr_format=3, attributes=to_json(dict(root_attrs)))
    chains = layout.num_chains
    dpc = draws_per_chunk
    phases = [("sample", layout.num_samples)]
    if save_warmup:
        phases.append(("warmup", layout.num_warmup))
    jobs: list[Any] = []
    groups: dict[str, Any] = {}

    async def group(name: str) -> Any:
        if name not in groups:
            groups[name] = await root.create_group(name)
        return groups[name]

    async def coord(node: Any, dim: str, size: int) -> None:
        arr = await node.create_array(
            dim,
            shape=(size,),
            chunks=(max(size, 1),),
            dtype="int64",
            dimension_names=(dim,),
            attributes=dict(POSITION_ATTRS),
            compressors=CODECS,
            config=ARRAY_CONFIG,
        )
        await arr.setitem(slice(None), np.arange(size, dtype=np.int64))

    for phase, draws in phases:
        post_name, stats_name, unc_name = PHASE_GROUPS[phase]
        per_draw: list[tuple[str, Mapping[str, tuple[tuple[int, ...], str]]]] = [
            (post_name, layout.posterior),
            (stats_name, {k: ((), v) for k, v in layout.stats.items()}),
        ]
        if include_transformed:
            per_draw.append((unc_name, layout.unconstrained))
        for name, variables in per_draw:
            node = await group(name)
            dims_seen: dict[str, int] = {CHAIN: chains, DRAW: draws}
            for var, (shape, dtype) in variables.items():
                dims = (CHAIN, DRAW, *(f"{var}_dim_{i}" for i in range(len(shape))))
                for dim, size in zip(dims[2:], shape, strict=True):
                    dims_seen[dim] = size
                np_dtype = np.dtype(dtype)
                jobs.append(
                    node.create_array(
                        var,
                        shape=(chains, draws, *shape),
                        chunks=draw_chunks(shape, dpc, np_dtype.itemsize),
                        dtype=np_dtype,
                        dimension_names=dims,
                        compressors=CODECS,
                        config=ARRAY_CONFIG,
                        **fill_value(np_dtype),
                    )
                )
            for dim, size in dims_seen.items():
                jobs.append(coord(node, dim, size))

    async def static(group_name: str, arrays: Mapping[str, np.ndarray]) -> None:
        if not arrays:
            return
        node = await group(group_name)
        dims_seen: dict[str, int] = {}
        for var, value in arrays.items():
            value = np.asarray(value)
            dims = tuple(f"{var}_dim_{i}" for i in range(value.ndim))
            dims_seen.update(zip(dims, value.shape, strict=True))
            arr = await node.create_array(
                var,
                shape=value.shape,
                chunks=row_chunks(value.shape, value.dtype.itemsize),
                dtype=value.dtype,
                dimension_names=dims,
                compressors=CODECS,
                config=ARRAY_CONFIG,
                **fill_value(value.dtype),
            )
            await arr.setitem(Ellipsis, value)
        for dim, size in dims_seen.items():
            await coord(node, dim, size)

    jobs.append(static(OBSERVED_DATA, layout.observed))
    jobs.append(static(CONSTANT_DATA, layout.constant))

    state = await group(SAMPLING_STATE)
    await state.update_attributes(
        {
            "leaves": [path for path, _, _, _ in layout.state_leaves],
            "description": "Sampler state per chain in two slots; the root attribute "
            f"{PROGRESS_ATTR!r} names the slot in use. Key leaves hold key data.",
        }
    )
    for i, (path, shape, dtype, key_impl) in enumerate(layout.state_leaves):
        name = state_name(i)
        attrs: dict[str, Any] = {"path": path}
        if key_impl is not None:
            attrs["key_impl"] = key_impl
        jobs.append(
            state.create_array(
                name,
                shape=(SLOTS, chains, *shape),
                chunks=(1, 1, *shape),
                dtype=np.dtype(dtype),
                dimension_names=(
                    "slot",
                    CHAIN,
                    *(f"{name}_dim_{j}" for j in range(len(shape))),
                ),
                attributes=attrs,
                compressors=CODECS,
                config=ARRAY_CONFIG,
            )
        )

    async def keys() -> None:
        data = np.asarray(layout.chain_keys)
        arr = await state.create_array(
            CHAIN_KEY,
            shape=data.shape,
            chunks=data.shape,
            dtype=data.dtype,
            dimension_names=(CHAIN, *(f"key_dim_{j}" for j in range(data.ndim - 1))),
            attributes={"key_impl": layout.key_impl},
            compressors=CODECS,
            config=ARRAY_CONFIG,
        )
        await arr.setitem(Ellipsis, data)

    jobs.append(keys())
    await asyncio.gather(*jobs)
