"""Streamed, resumable MCMC traces in Zarr: :class:`ZarrTrace`.

A trace is a Zarr v3 hierarchy laid out like an ArviZ ``InferenceData``:

``posterior``, ``sample_stats``
    Draws of the latent sites and the sampler's statistics, arrays
    ``(chain, draw, ...)`` chunked ``(1, draws_per_chunk, ...)``.
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
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import json
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr
import zarr
import zarr.errors
from zarr.abc.store import Store
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore, MemoryStore

from dopax.exceptions import TraceMismatchError
from dopax.output.schema import CHAIN, DRAW, POSITION_ATTRS, POSTERIOR, base_attrs

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
    "ZarrTrace",
]

logger = logging.getLogger("dopax")

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
#: Version of the layout written here.
FORMAT_VERSION = 1

#: The per-draw groups of each phase: (draws, statistics, unconstrained draws).
_PHASE_GROUPS = {
    "sample": (POSTERIOR, SAMPLE_STATS, UNCONSTRAINED_POSTERIOR),
    "warmup": (WARMUP_POSTERIOR, WARMUP_SAMPLE_STATS, WARMUP_UNCONSTRAINED_POSTERIOR),
}
_SLOTS = 2
_CHAIN_KEY = "chain_key"
_STATIC_CHUNK_BYTES = 64 * 2**20
_CONSOLIDATED_WARNING = "Consolidated metadata is currently not part"


# ---------------------------------------------------------------------------- stores
def _resolve_store(
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


def _json(value: Any) -> Any:
    """``value`` with NumPy scalars and tuples turned into JSON types."""
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _fill_value(dtype: np.dtype[Any]) -> dict[str, Any]:
    """NaN for floating point (what xarray writes), Zarr's default otherwise."""
    return {"fill_value": np.nan} if dtype.kind == "f" else {}


def _row_chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Chunks of a static array: whole rows, at most 64 MiB per chunk."""
    if not shape:
        return ()
    per_row = max(int(np.prod(shape[1:], dtype=np.int64)) * itemsize, 1)
    rows = max(1, min(shape[0], _STATIC_CHUNK_BYTES // per_row))
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
        self.fingerprint = _json(fingerprint)


def _state_name(index: int) -> str:
    return f"state_{index:03d}"


# ---------------------------------------------------------------------------- the trace
class ZarrTrace:
    """An MCMC trace streamed to Zarr as the sampler runs, and resumable.

    Pass it to :meth:`dopax.ImpactModel.fit_on_batch` (MCMC models only): the
    sampler then runs in segments of ``draws_per_chunk`` iterations per chain,
    warm-up included, and after each segment the draws, the sample statistics
    and the sampler state are written. An interrupted run (Ctrl-C, an
    exception, ``kill -9``) resumes from its last durable segment when the
    reopened trace (:meth:`open`) is passed to ``fit_on_batch`` again; the
    finished draws are bit-identical to an uninterrupted run with the same key
    and do not depend on ``draws_per_chunk``.

    Args:
        store: Where to write: a local path, an fsspec URL (``memory://``,
            ``s3://``, ...), a ``zarr`` store, or ``None`` for memory (gone with
            the object). A path or URL must not hold anything yet.
        draws_per_chunk: Iterations per segment, and draws per chunk of every
            per-draw array.
        include_transformed: Also keep the unconstrained values
            (``unconstrained_posterior``).
        save_warmup: Also keep the warm-up iterations (``warmup_posterior``,
            ``warmup_sample_stats``).
        storage_options: fsspec options for a URL.

    Raises:
        FileExistsError: If the store already holds a Zarr hierarchy (open an
            existing trace with :meth:`open`).
        ValueError: If ``draws_per_chunk`` is not a positive integer.
    """

    def __init__(
        self,
        store: Any = None,
        *,
        draws_per_chunk: int = 100,
        include_transformed: bool = False,
        save_warmup: bool = False,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(draws_per_chunk, bool) or not isinstance(draws_per_chunk, int | np.integer):
            raise ValueError(f"`draws_per_chunk` must be a positive int; got {draws_per_chunk!r}.")
        if draws_per_chunk < 1:
            raise ValueError(f"`draws_per_chunk` must be a positive int; got {draws_per_chunk}.")
        self._store, self._label = _resolve_store(store, storage_options, read_only=False)
        self._draws_per_chunk = int(draws_per_chunk)
        self._include_transformed = bool(include_transformed)
        self._save_warmup = bool(save_warmup)
        self._settings: dict[str, Any] | None = None
        if self._holds_hierarchy():
            raise FileExistsError(
                f"{self._label} already holds a Zarr hierarchy. Reopen a trace with "
                "`dopax.ZarrTrace.open(store)` to resume or extend it, or write to a new store."
            )

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, store: Any, *, storage_options: Mapping[str, Any] | None = None) -> ZarrTrace:
        """Reopen a trace written by dopax.

        Args:
            store: The trace's path, URL or ``zarr`` store.
            storage_options: fsspec options for a URL.

        Returns:
            The trace; see :attr:`status`.

        Raises:
            FileNotFoundError: If there is no dopax trace in the store.
        """
        self = cls.__new__(cls)
        self._store, self._label = _resolve_store(store, storage_options, read_only=False)
        self._settings = None
        settings = self._read_settings()
        if settings is None:
            raise FileNotFoundError(
                f"No dopax trace at {self._label} (a run stopped while laying out a new "
                "trace leaves a store without one: delete it and start again)."
            )
        self._draws_per_chunk = int(settings["draws_per_chunk"])
        self._include_transformed = bool(settings["include_transformed"])
        self._save_warmup = bool(settings["save_warmup"])
        return self

    def _holds_hierarchy(self) -> bool:
        try:
            return bool(sync(self._store.exists("zarr.json"))) or bool(
                sync(self._store.exists(".zgroup"))
            )
        except FileNotFoundError:
            return False

    def _root(self, *, mode: Literal["r", "r+"] = "r+") -> zarr.Group:
        # Writers keep the consolidated metadata (a group opened without it would
        # drop it on its next attribute update); readers take it when present, as
        # a trace being created has none yet.
        consolidated = True if mode == "r+" else None
        return zarr.open_group(self._store, mode=mode, zarr_format=3, use_consolidated=consolidated)

    def _read_attrs(self) -> dict[str, Any] | None:
        try:
            if not sync(self._store.exists("zarr.json")):
                return None
            return dict(self._root(mode="r").attrs)
        except (FileNotFoundError, zarr.errors.BaseZarrError):
            return None

    def _read_settings(self) -> dict[str, Any] | None:
        attrs = self._read_attrs()
        if attrs is None or TRACE_ATTR not in attrs:
            return None
        self._settings = dict(attrs[TRACE_ATTR])
        return self._settings

    # ------------------------------------------------------------------ properties
    @property
    def store(self) -> Store:
        """The Zarr store."""
        return self._store

    @property
    def draws_per_chunk(self) -> int:
        """Iterations per segment and draws per chunk."""
        return self._draws_per_chunk

    @property
    def include_transformed(self) -> bool:
        """Whether unconstrained values are kept."""
        return self._include_transformed

    @property
    def save_warmup(self) -> bool:
        """Whether warm-up iterations are kept."""
        return self._save_warmup

    @property
    def initialized(self) -> bool:
        """Whether a run has laid out its arrays in the store."""
        return self._read_settings() is not None

    def _progress(self) -> dict[str, list[int]] | None:
        attrs = self._read_attrs()
        if attrs is None or TRACE_ATTR not in attrs or PROGRESS_ATTR not in attrs:
            return None
        self._settings = dict(attrs[TRACE_ATTR])
        progress = attrs[PROGRESS_ATTR]
        return {"iterations": list(progress["iterations"]), "slot": list(progress["slot"])}

    @property
    def num_chains(self) -> int | None:
        """Number of chains (``None`` before the first run)."""
        settings = self._read_settings()
        return None if settings is None else int(settings["num_chains"])

    @property
    def num_warmup(self) -> int | None:
        """Warm-up iterations per chain (``None`` before the first run)."""
        settings = self._read_settings()
        return None if settings is None else int(settings["num_warmup"])

    @property
    def num_samples(self) -> int | None:
        """Draws per chain the trace is to hold, extensions included."""
        settings = self._read_settings()
        return None if settings is None else int(settings["num_samples_total"])

    @property
    def iterations_done(self) -> tuple[int, ...]:
        """Durable iterations per chain, warm-up included (empty before the first run)."""
        progress = self._progress()
        return () if progress is None else tuple(int(i) for i in progress["iterations"])

    @property
    def draws_done(self) -> tuple[int, ...]:
        """Durable posterior draws per chain (empty before the first run)."""
        done = self.iterations_done
        if not done:
            return ()
        warmup = int(self._settings["num_warmup"]) if self._settings else 0
        return tuple(max(0, i - warmup) for i in done)

    @property
    def status(self) -> str:
        """``"complete"``, ``"interrupted"`` (see :attr:`draws_done`) or ``"empty"``."""
        progress = self._progress()
        if progress is None or not any(progress["iterations"]):
            return "empty"
        assert self._settings is not None
        total = int(self._settings["num_warmup"]) + int(self._settings["num_samples_total"])
        if all(int(i) >= total for i in progress["iterations"]):
            return "complete"
        return "interrupted"

    def __repr__(self) -> str:
        status = self.status
        extra = ""
        if status == "interrupted":
            extra = f", draws_done={list(self.draws_done)}"
        return (
            f"ZarrTrace({self._label!r}, status={status!r}{extra}, "
            f"draws_per_chunk={self._draws_per_chunk})"
        )

    # ------------------------------------------------------------------ creation
    def _settings_for(self, layout: TraceLayout) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "draws_per_chunk": self._draws_per_chunk,
            "include_transformed": self._include_transformed,
            "save_warmup": self._save_warmup,
            "num_chains": layout.num_chains,
            "num_warmup": layout.num_warmup,
            "num_samples": layout.num_samples,
            "num_samples_total": layout.num_samples,
            "fingerprint": layout.fingerprint,
        }

    def _create(self, layout: TraceLayout) -> None:
        """Lay out every group and array of a new run; the marker is written last."""
        if self._holds_hierarchy():
            raise FileExistsError(f"{self._label} already holds a Zarr hierarchy.")
        import jax
        import numpyro

        from dopax._version import __version__

        root_attrs = base_attrs(
            {
                "creation_library": "dopax",
                "creation_library_version": __version__,
                "inference_library": "numpyro",
                "inference_library_version": numpyro.__version__,
                "jax_version": jax.__version__,
            }
        )
        sync(self._create_nodes(layout, root_attrs))
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=_CONSOLIDATED_WARNING, category=zarr.errors.ZarrUserWarning
            )
            zarr.consolidate_metadata(self._store, zarr_format=3)
        settings = self._settings_for(layout)
        root = self._root()
        root.attrs.update(
            {
                TRACE_ATTR: settings,
                PROGRESS_ATTR: {
                    "iterations": [0] * layout.num_chains,
                    "slot": [0] * layout.num_chains,
                },
            }
        )
        self._settings = settings
        logger.debug("Created trace at %s", self._label)

    async def _create_nodes(self, layout: TraceLayout, root_attrs: Mapping[str, Any]) -> None:
        api = zarr.api.asynchronous
        root = await api.create_group(
            store=self._store, zarr_format=3, attributes=_json(dict(root_attrs))
        )
        chains = layout.num_chains
        dpc = self._draws_per_chunk
        phases = [("sample", layout.num_samples)]
        if self._save_warmup:
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
            )
            await arr.setitem(slice(None), np.arange(size, dtype=np.int64))

        for phase, draws in phases:
            post_name, stats_name, unc_name = _PHASE_GROUPS[phase]
            per_draw: list[tuple[str, Mapping[str, tuple[tuple[int, ...], str]]]] = [
                (post_name, layout.posterior),
                (stats_name, {k: ((), v) for k, v in layout.stats.items()}),
            ]
            if self._include_transformed:
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
                            chunks=(1, dpc, *shape),
                            dtype=np_dtype,
                            dimension_names=dims,
                            config={"write_empty_chunks": True},
                            **_fill_value(np_dtype),
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
                    chunks=_row_chunks(value.shape, value.dtype.itemsize),
                    dtype=value.dtype,
                    dimension_names=dims,
                    **_fill_value(value.dtype),
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
            name = _state_name(i)
            attrs: dict[str, Any] = {"path": path}
            if key_impl is not None:
                attrs["key_impl"] = key_impl
            jobs.append(
                state.create_array(
                    name,
                    shape=(_SLOTS, chains, *shape),
                    chunks=(1, 1, *shape),
                    dtype=np.dtype(dtype),
                    dimension_names=(
                        "slot",
                        CHAIN,
                        *(f"{name}_dim_{j}" for j in range(len(shape))),
                    ),
                    attributes=attrs,
                    config={"write_empty_chunks": True},
                )
            )

        async def keys() -> None:
            data = np.asarray(layout.chain_keys)
            arr = await state.create_array(
                _CHAIN_KEY,
                shape=data.shape,
                chunks=data.shape,
                dtype=data.dtype,
                dimension_names=(CHAIN, *(f"key_dim_{j}" for j in range(data.ndim - 1))),
                attributes={"key_impl": layout.key_impl},
            )
            await arr.setitem(Ellipsis, data)

        jobs.append(keys())
        await asyncio.gather(*jobs)

    # ------------------------------------------------------------------ checks
    def _check(self, fingerprint: Mapping[str, Any]) -> None:
        """Raise :class:`TraceMismatchError` if ``fingerprint`` differs from the trace's."""
        settings = self._read_settings()
        assert settings is not None
        recorded = settings["fingerprint"]
        now = _json(fingerprint)
        differences: list[str] = []
        for section in sorted(set(recorded) | set(now)):
            old, new = recorded.get(section, {}), now.get(section, {})
            for key in sorted(set(old) | set(new)):
                if old.get(key) != new.get(key):
                    differences.append(
                        f"{section} {key!r} (trace: {_short(old.get(key))}, "
                        f"now: {_short(new.get(key))})"
                    )
        if differences:
            raise TraceMismatchError(
                f"The trace at {self._label} was written by another run; resuming it would mix "
                "two runs. Differences: " + "; ".join(differences) + ". Use a new trace, or "
                "resume with the data, kernel and sampler settings the trace was written with."
            )

    # ------------------------------------------------------------------ segment writes
    def _open_arrays(self) -> tuple[zarr.Group, dict[str, zarr.Array]]:
        root = self._root()
        out: dict[str, zarr.Array] = {}
        for group_name, node in root.groups():
            for name, arr in node.arrays():
                out[f"{group_name}/{name}"] = arr
        return root, out

    def _write_segment(
        self,
        root: zarr.Group,
        arrays: Mapping[str, zarr.Array],
        chains: slice,
        start: int,
        records: Mapping[str, Mapping[str, np.ndarray]],
        state_leaves: Sequence[np.ndarray],
        progress: dict[str, list[int]],
    ) -> None:
        """Write one segment of ``chains`` and then move their marker.

        Args:
            root: The trace's root group (from :meth:`_open_arrays`).
            arrays: The trace's arrays (from :meth:`_open_arrays`).
            chains: The chains the segment ran.
            start: The first iteration of the segment (warm-up included).
            records: ``{"posterior"|"sample_stats"|"unconstrained": {name:
                (chains, n, ...)}}``.
            state_leaves: The chains' state at the segment's end, one array
                ``(chains, ...)`` per leaf.
            progress: The marker; updated in place once the writes are durable.
        """
        settings = self._settings
        assert settings is not None
        num_warmup = int(settings["num_warmup"])
        warmup = start < num_warmup
        n = next(iter(records[POSTERIOR].values())).shape[1] if records[POSTERIOR] else None
        if n is None:
            n = next(iter(records[SAMPLE_STATS].values())).shape[1]
        offset = start if warmup else start - num_warmup
        post_name, stats_name, unc_name = _PHASE_GROUPS["warmup" if warmup else "sample"]
        writes: list[tuple[zarr.Array, tuple[Any, ...], np.ndarray]] = []
        if not warmup or self._save_warmup:
            targets = {POSTERIOR: post_name, SAMPLE_STATS: stats_name}
            if self._include_transformed:
                targets[UNCONSTRAINED_POSTERIOR] = unc_name
            for kind, group in targets.items():
                for name, value in records[kind].items():
                    writes.append(
                        (arrays[f"{group}/{name}"], (chains, slice(offset, offset + n)), value)
                    )
        sync(self._set_all(writes))
        slots = progress["slot"]
        chain_ids = range(*chains.indices(len(slots)))
        new_slot = {c: 1 - int(slots[c]) for c in chain_ids}
        state_writes = []
        for i, leaf in enumerate(state_leaves):
            arr = arrays[f"{SAMPLING_STATE}/{_state_name(i)}"]
            for j, c in enumerate(chain_ids):
                state_writes.append((arr, (new_slot[c], c), leaf[j]))
        sync(self._set_all(state_writes))
        for c in chain_ids:
            progress["iterations"][c] = start + n
            slots[c] = new_slot[c]
        root.attrs.update({PROGRESS_ATTR: progress})

    @staticmethod
    async def _set_all(writes: Sequence[tuple[zarr.Array, tuple[Any, ...], np.ndarray]]) -> None:
        await asyncio.gather(
            *(arr.async_array.setitem(selection, value) for arr, selection, value in writes)
        )

    # ------------------------------------------------------------------ reading
    def _read_state(self, chain: int) -> list[np.ndarray]:
        """Return the leaves of ``chain``'s durable state (key leaves as key data)."""
        progress = self._progress()
        assert progress is not None
        slot = int(progress["slot"][chain])
        root = self._root(mode="r")
        node = root[SAMPLING_STATE]
        assert isinstance(node, zarr.Group)
        count = len(list(node.attrs["leaves"]))  # type: ignore[arg-type]
        out = []
        for i in range(count):
            arr = node[_state_name(i)]
            assert isinstance(arr, zarr.Array)
            out.append(np.asarray(arr[slot, chain]))
        return out

    def _state_meta(self) -> tuple[list[str], list[str | None]]:
        root = self._root(mode="r")
        node = root[SAMPLING_STATE]
        assert isinstance(node, zarr.Group)
        paths = [str(p) for p in node.attrs["leaves"]]  # type: ignore[union-attr]
        impls: list[str | None] = []
        for i in range(len(paths)):
            impl = node[_state_name(i)].attrs.get("key_impl")
            impls.append(None if impl is None else str(impl))
        return paths, impls

    def _read_chain_keys(self) -> tuple[np.ndarray, str]:
        root = self._root(mode="r")
        arr = root[f"{SAMPLING_STATE}/{_CHAIN_KEY}"]
        assert isinstance(arr, zarr.Array)
        return np.asarray(arr[...]), str(arr.attrs["key_impl"])

    def _read_group(self, group: str, num_draws: int | None = None) -> dict[str, np.ndarray]:
        """Return the per-draw variables of ``group`` as ``(chain, draw, ...)`` arrays."""
        root = self._root(mode="r")
        node = root[group]
        assert isinstance(node, zarr.Group)
        out = {}
        for name, arr in node.arrays():
            if name in (CHAIN, DRAW) or len(arr.shape) < 2:
                continue
            stop = arr.shape[1] if num_draws is None else num_draws
            out[name] = np.asarray(arr[:, :stop])
        return out

    def to_datatree(self) -> xr.DataTree:
        """Open the trace lazily as an :class:`xarray.DataTree`.

        Variables are dask-backed. The private ``_sampling_state`` group is left
        out; while a run is unfinished, the per-draw groups hold the draws every
        chain has finished.

        Raises:
            FileNotFoundError: If no run has written to the trace yet.
        """
        progress = self._progress()
        if progress is None:
            raise FileNotFoundError(f"The trace at {self._label} holds no run yet.")
        assert self._settings is not None
        num_warmup = int(self._settings["num_warmup"])
        total = num_warmup + int(self._settings["num_samples_total"])
        done = min(int(i) for i in progress["iterations"])
        store = self._store
        if not store.read_only:
            with contextlib.suppress(NotImplementedError):
                store = store.with_read_only(True)
        tree = xr.open_datatree(
            store,  # type: ignore[arg-type]
            engine="zarr",
            consolidated=True,
            chunks={},
        )
        nodes: dict[str, xr.Dataset] = {}
        for path, node in tree.subtree_with_keys:
            name = path.split("/")[0]
            if name == SAMPLING_STATE:
                continue
            ds = node.to_dataset(inherit=False)
            if done < total and DRAW in ds.dims:
                if name.startswith("warmup_"):
                    ds = ds.isel({DRAW: slice(0, min(done, num_warmup))})
                elif name in _PHASE_GROUPS["sample"]:
                    ds = ds.isel({DRAW: slice(0, max(0, done - num_warmup))})
            nodes["/" if path == "." else f"/{path}"] = ds
        out = xr.DataTree.from_dict(nodes)
        return out

    # ------------------------------------------------------------------ extension
    def extend(self, draws: int) -> ZarrTrace:
        """Make room for ``draws`` more posterior draws per chain.

        The next :meth:`~dopax.ImpactModel.fit_on_batch` with this trace (same
        data, kernel and sampler settings) continues every chain from its last
        state and fills them. The draws are the ones a run with that many more
        ``num_samples`` would have given. Until then :attr:`status` is
        ``"interrupted"``.

        Args:
            draws: Further draws per chain (a positive int).

        Returns:
            The trace itself.

        Raises:
            FileNotFoundError: If no run has written to the trace yet.
            ValueError: If ``draws`` is not a positive int.
        """
        if isinstance(draws, bool) or not isinstance(draws, int | np.integer) or draws < 1:
            raise ValueError(f"`draws` must be a positive int; got {draws!r}.")
        settings = self._read_settings()
        if settings is None:
            raise FileNotFoundError(f"The trace at {self._label} holds no run to extend.")
        new_total = int(settings["num_samples_total"]) + int(draws)
        root = self._root()
        for group in _PHASE_GROUPS["sample"]:
            if group not in root:
                continue
            node = root[group]
            assert isinstance(node, zarr.Group)
            for name, arr in node.arrays():
                if name == DRAW:
                    arr.resize((new_total,))
                    arr[:] = np.arange(new_total, dtype=np.int64)
                elif name != CHAIN and len(arr.shape) >= 2:
                    arr.resize((arr.shape[0], new_total, *arr.shape[2:]))
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=_CONSOLIDATED_WARNING, category=zarr.errors.ZarrUserWarning
            )
            zarr.consolidate_metadata(self._store, zarr_format=3)
        settings = {**settings, "num_samples_total": new_total}
        extensions = list(settings.get("extensions", []))
        extensions.append(
            {"draws": int(draws), "at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
        )
        settings["extensions"] = extensions
        self._root().attrs.update({TRACE_ATTR: settings})
        self._settings = settings
        return self


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
