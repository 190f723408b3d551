"""Streamed, resumable MCMC traces in Zarr: :class:`ZarrTrace`.

The groups, arrays and attributes of a trace, and how a segment becomes
durable, are described in :mod:`dopax.inference.trace_layout`; the sampler
that fills a trace is :func:`dopax.inference.segments.run_to_trace`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np
import xarray as xr
import zarr
import zarr.errors
from zarr.abc.store import Store
from zarr.core.sync import sync

from dopax.exceptions import TraceMismatchError
from dopax.inference import trace_check, trace_io
from dopax.inference.trace_layout import (
    PROGRESS_ATTR,
    TRACE_ATTR,
    TraceLayout,
    consolidate,
    create_nodes,
    resolve_store,
    to_json,
)
from dopax.output.schema import base_attrs

__all__ = ["ZarrTrace"]

logger = logging.getLogger("dopax")


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
        self._store, self._label = resolve_store(store, storage_options, read_only=False)
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
        self._store, self._label = resolve_store(store, storage_options, read_only=False)
        self._settings = None
        settings = self._read_settings()
        if settings is None:
            raise FileNotFoundError(
                f"No dopax trace at {self._label} (a run stopped while laying out a new "
                "trace leaves a store without one: delete it and start again)."
            )
        trace_check.check_format(settings, self._label)
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

    def _checked(self) -> bool:
        return trace_check.is_checked(self._settings or self._read_settings())

    def _reader(self) -> zarr.Group:
        return trace_check.reader(self._store, self._label, self._checked())

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

    def _progress(self) -> dict[str, list[Any]] | None:
        attrs = self._read_attrs()
        if attrs is None or TRACE_ATTR not in attrs or PROGRESS_ATTR not in attrs:
            return None
        self._settings = dict(attrs[TRACE_ATTR])
        progress = attrs[PROGRESS_ATTR]
        out = {"iterations": list(progress["iterations"]), "slot": list(progress["slot"])}
        if trace_io.DIGEST_KEY in progress:
            out[trace_io.DIGEST_KEY] = list(progress[trace_io.DIGEST_KEY])
        return out

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
    def _create(self, layout: TraceLayout) -> None:
        """Lay out every group and array of a new run; the marker is written last."""
        if self._holds_hierarchy():
            raise FileExistsError(f"{self._label} already holds a Zarr hierarchy.")
        sync(
            create_nodes(
                self._store,
                layout,
                base_attrs(trace_io.provenance_attrs()),
                draws_per_chunk=self._draws_per_chunk,
                include_transformed=self._include_transformed,
                save_warmup=self._save_warmup,
            )
        )
        consolidate(self._store)
        settings = trace_io.settings_for(
            layout, self._draws_per_chunk, self._include_transformed, self._save_warmup
        )
        root = self._root()
        root.attrs.update(
            {
                TRACE_ATTR: settings,
                PROGRESS_ATTR: {
                    "iterations": [0] * layout.num_chains,
                    "slot": [0] * layout.num_chains,
                    trace_io.DIGEST_KEY: [None] * layout.num_chains,
                },
            }
        )
        self._settings = settings
        logger.debug("Created trace at %s", self._label)

    # ------------------------------------------------------------------ checks
    def _check(self, fingerprint: Mapping[str, Any]) -> None:
        """Raise :class:`TraceMismatchError` if ``fingerprint`` differs from the trace's."""
        settings = self._read_settings()
        assert settings is not None
        differences = trace_io.differences(settings["fingerprint"], to_json(fingerprint))
        if differences:
            raise TraceMismatchError(
                f"The trace at {self._label} was written by another run; resuming it would mix "
                "two runs. Differences: " + "; ".join(differences) + ". Use a new trace, or "
                "resume with the data, kernel and sampler settings the trace was written with."
            )

    # ------------------------------------------------------------------ segments and state
    def _segment_writer(self) -> Callable[..., None]:
        """Return ``write(chains, start, records, state_leaves, progress)`` for this trace.

        It writes one segment and moves the marker (:func:`trace_io.write_segment`).
        """
        assert self._settings is not None
        root = self._root()
        return functools.partial(
            trace_io.write_segment, root, trace_io.open_arrays(root), self._settings
        )

    def _read_state(self, chain: int) -> list[np.ndarray]:
        """The leaves of ``chain``'s state, verified (:func:`trace_check.verified_state`)."""
        progress = self._progress()
        assert progress is not None
        return trace_check.verified_state(
            self._store, self._label, self._checked(), progress, chain
        )

    def _state_meta(self) -> tuple[list[str], list[str | None]]:
        return trace_io.state_meta(self._root(mode="r"))

    def _read_chain_keys(self) -> tuple[np.ndarray, str]:
        return trace_check.chain_keys(self._reader(), self._label)

    def _read_group(self, group: str) -> dict[str, np.ndarray]:
        return trace_io.read_group(self._reader(), group)

    def _stored_group(self, group: str) -> dict[str, Any]:
        return trace_io.stored_group(self._reader(), group)

    # ------------------------------------------------------------------ reading
    def to_datatree(self) -> xr.DataTree:
        """Open the trace lazily as an :class:`xarray.DataTree`.

        Variables are dask-backed. The private ``_sampling_state`` group is left
        out; while a run is unfinished, the per-draw groups hold the draws every
        chain has finished.

        Returns:
            The trace's groups (``posterior``, ``sample_stats``, ...) as a tree.

        Raises:
            FileNotFoundError: If no run has written to the trace yet.
        """
        progress = self._progress()
        if progress is None:
            raise FileNotFoundError(f"The trace at {self._label} holds no run yet.")
        assert self._settings is not None
        store = self._store
        if not store.read_only:
            with contextlib.suppress(NotImplementedError):
                store = store.with_read_only(True)
        if self._checked():
            store = trace_check.TraceStore(store, label=self._label)
        done = min(int(i) for i in progress["iterations"])
        return trace_io.open_tree(store, self._settings, done)

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
        trace_io.resize_draws(self._root(), new_total)
        consolidate(self._store)
        settings = {**settings, "num_samples_total": new_total}
        extensions = list(settings.get("extensions", []))
        extensions.append(
            {"draws": int(draws), "at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
        )
        settings["extensions"] = extensions
        self._root().attrs.update({TRACE_ATTR: settings})
        self._settings = settings
        return self
