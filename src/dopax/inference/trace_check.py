"""Reading a trace verified: every chunk present and matching its checksum, the state recorded.

A trace of format 2 is read through :class:`TraceStore`, which raises
:class:`~dopax.exceptions.TraceCorruptError` naming a chunk that is missing
or does not match its checksum. A run resumes only from the sampler state
whose SHA-256 the progress marker recorded (:func:`verified_state`); a
trace of format 1 recorded none and wrote no checksums, so it must at least
still hold every state array.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr
import zarr.errors
from zarr.abc.store import Store
from zarr.core.sync import sync

from dopax.exceptions import TraceCorruptError, TraceMismatchError
from dopax.inference import trace_io
from dopax.inference.trace_layout import FORMAT_VERSION, SAMPLING_STATE, state_name
from dopax.output.store import StrictStore

__all__ = [
    "TraceStore",
    "check_format",
    "is_checked",
    "chain_keys",
    "reader",
    "verified_state",
]

FIX = (
    "Restore the trace from a copy, or sample again into a new trace (a trace cannot "
    "be repaired in place)."
)


class TraceStore(StrictStore):
    """Reads of a trace: a missing chunk, or one whose checksum does not match, raises.

    The error is :class:`~dopax.exceptions.TraceCorruptError` naming the chunk
    and the trace.
    """

    def __repr__(self) -> str:
        return f"TraceStore({self.label!r})"

    def _missing(self, key: str) -> Exception:
        return TraceCorruptError(
            f"{key!r} is missing from the trace at {self.label}: a file of the trace was "
            f"deleted or moved after it was written. {FIX}"
        )

    def _corrupt(self, key: str) -> Exception:
        return TraceCorruptError(
            f"Chunk {key!r} of the trace at {self.label} does not match its checksum: the "
            f"file was modified or damaged after it was written. {FIX}"
        )


def is_checked(settings: dict[str, Any] | None) -> bool:
    """Whether a trace's chunks carry checksums and are all written (format 2 on)."""
    return settings is not None and int(settings.get("format", 1)) >= 2


def check_format(settings: dict[str, Any], label: str) -> None:
    """Raise if a newer dopax wrote the trace."""
    if int(settings.get("format", 1)) > FORMAT_VERSION:
        raise TraceMismatchError(
            f"The trace at {label} has format {settings.get('format')}; this dopax reads "
            f"formats up to {FORMAT_VERSION}. Upgrade dopax."
        )


def reader(store: Store, label: str, checked: bool) -> zarr.Group:
    """The trace's root group for reading, through a :class:`TraceStore` when checked."""
    return zarr.open_group(
        TraceStore(store, label=label) if checked else store, mode="r", zarr_format=3
    )


def chain_keys(root: zarr.Group, label: str) -> tuple[np.ndarray, str]:
    """The chains' starting keys (:func:`trace_io.read_chain_keys`), or a refusal to resume."""
    try:
        return trace_io.read_chain_keys(root)
    except TraceCorruptError as err:
        raise TraceCorruptError(
            f"The chain keys of the trace at {label} are incomplete, so the run does not "
            f"resume from it and the trace is left as it was: {err}"
        ) from None


def _check_state_arrays(store: Store, label: str) -> None:
    """Raise if a state array's metadata is gone (format 1: its chunks may be absent)."""
    root = zarr.open_group(store, mode="r", zarr_format=3)
    paths, _ = trace_io.state_meta(root)
    keys = [f"{SAMPLING_STATE}/zarr.json"]
    keys += [f"{SAMPLING_STATE}/{state_name(i)}/zarr.json" for i in range(len(paths))]
    for key in keys:
        if not sync(store.exists(key)):
            raise TraceCorruptError(f"{key!r} is missing from the trace at {label}.")


def verified_state(
    store: Store, label: str, checked: bool, progress: dict[str, list[Any]], chain: int
) -> list[np.ndarray]:
    """Return the leaves of ``chain``'s durable state after checking it is the one recorded.

    Args:
        store: The trace's store.
        label: The trace's path or URL, for messages.
        checked: Whether the trace is of format 2 (checksums, every chunk written).
        progress: The trace's progress marker.
        chain: The chain.

    Raises:
        TraceCorruptError: Naming what is missing or differs; nothing is written.
    """
    slot = int(progress["slot"][chain])
    where = f"{label}/{SAMPLING_STATE}"
    refuse = f"The run does not resume from it, and the trace is left as it was. {FIX}"
    try:
        if not checked:
            _check_state_arrays(store, label)
        leaves = trace_io.read_state(reader(store, label, checked), chain, slot)
    except TraceCorruptError as err:
        raise TraceCorruptError(
            f"The sampler state of chain {chain} in {where} is incomplete, so the run does "
            f"not resume from it and the trace is left as it was: {err}"
        ) from None
    except (KeyError, ValueError, TypeError, zarr.errors.BaseZarrError) as err:
        raise TraceCorruptError(
            f"The sampler state of chain {chain} in {where} cannot be read "
            f"({type(err).__name__}: {err}). {refuse}"
        ) from err
    digests = progress.get(trace_io.DIGEST_KEY)
    recorded = digests[chain] if digests is not None and chain < len(digests) else None
    if recorded is None and checked:
        raise TraceCorruptError(
            f"The progress marker of the trace at {label} records no digest of chain "
            f"{chain}'s sampler state, which every segment writes. {refuse}"
        )
    if recorded is not None and trace_io.state_digest(leaves) != recorded:
        raise TraceCorruptError(
            f"The sampler state of chain {chain} in {where} (slot {slot}) is not the one the "
            f"trace's progress marker recorded: it was modified, replaced or lost after it "
            f"was written. {refuse}"
        )
    return leaves
