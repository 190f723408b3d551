"""Removing results that were never completed: now, later, or on request.

A failed call removes what it wrote. When the store itself is failing (a
bucket that stops answering, a network file system gone away), that removal
fails too, and the partial result stays behind without its completion marker
(:func:`~dopax.output.store.open_result` refuses it). Such removals are kept
here and tried again at the start of every later persisted call and when the
process exits, so the result goes once the store answers again;
:func:`remove_incomplete` removes whatever is left after a crash or a
restart.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import functools
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable, Mapping
from typing import Any

from dopax.output.location import location
from dopax.output.store import is_complete

__all__ = [
    "defer_removal",
    "pending_removals",
    "removal_failed",
    "remove_incomplete",
    "retry_removals",
]

logger = logging.getLogger("dopax")

_lock = threading.Lock()
_pending: dict[str, Callable[[], None]] = {}

#: Names of the result folders dopax makes: ``<call>-<UTC time>-<id>.zarr``.
RESULT_NAME = re.compile(r"^(?P<call>[A-Za-z_]+)-(?P<stamp>\d{8}T\d{6})-[0-9a-f]{8}\.zarr$")


def defer_removal(label: str, remove: Callable[[], None]) -> None:
    """Keep a removal that failed, to try it again later.

    Args:
        label: The result's path or URL.
        remove: Removes it (raises while the store does not answer).
    """
    with _lock:
        _pending[label] = remove


def removal_failed(
    label: str,
    remove: Callable[..., None],
    args: tuple[Any, ...],
    err: BaseException,
    has_base: bool,
) -> None:
    """Keep a failed removal for later and say so: a warning, and a note on the call's error.

    Args:
        label: The partial result's path or URL.
        remove: Removes it when called with ``args``.
        args: Its arguments.
        err: Why the removal failed; the error being handled when it did
            (``err.__context__``), the call's own, gets the note.
        has_base: Whether the result lies in a folder or URL prefix
            (:func:`remove_incomplete` finds it there) rather than a store.
    """
    defer_removal(label, functools.partial(remove, *args))
    if has_base:
        how = f"`dopax.remove_incomplete({label.rstrip('/').rsplit('/', 1)[0]!r})` removes it"
    else:
        how = "clear the store to remove it"
    message = (
        f"The partial result at {label} could not be removed ({type(err).__name__}: {err}). "
        "It has no completion marker, so `open_result` refuses it; dopax removes it at its "
        f"next persisted call, or at exit, once the store answers again, and {how}."
    )
    logger.warning(message)
    if err.__context__ is not None:
        err.__context__.add_note(message)


def pending_removals() -> list[str]:
    """Return the results whose removal is still to be tried again."""
    with _lock:
        return sorted(_pending)


def retry_removals() -> list[str]:
    """Try every deferred removal again; return the results removed now.

    Never raises: a store that still does not answer keeps its removal for later.
    """
    with _lock:
        todo = list(_pending.items())
    done = []
    for label, remove in todo:
        try:
            remove()
        except Exception as err:
            logger.debug("The partial result at %s is still not removable: %s", label, err)
            continue
        with _lock:
            _pending.pop(label, None)
        logger.info("Removed the partial result at %s left by a failed call.", label)
        done.append(label)
    return done


atexit.register(retry_removals)


def _age_seconds(stamp: str, now: _dt.datetime) -> float:
    made = _dt.datetime.strptime(stamp, "%Y%m%dT%H%M%S").replace(tzinfo=_dt.UTC)
    return (now - made).total_seconds()


def remove_incomplete(
    output_dir: str | os.PathLike[str],
    *,
    older_than: float = 3600.0,
    storage_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Remove the results under ``output_dir`` that a call began and never completed.

    Only folders named as dopax names a call's result
    (``predict-20250101T120000-ab12cd34.zarr``) and without the completion
    marker are removed, and only once they are older than ``older_than``
    seconds (by the time in their name), so that a call still writing is
    left alone. Complete results and anything else stay.

    Args:
        output_dir: The base folder or URL given to the calls as ``output_dir``.
        older_than: Age in seconds below which an incomplete result is kept
            (it may still be being written); ``0`` removes every one.
        storage_options: fsspec options for a URL.

    Returns:
        The paths or URLs removed.

    Raises:
        ValueError: For a negative ``older_than`` or an unknown URL scheme.
    """
    if isinstance(older_than, bool) or not isinstance(older_than, int | float) or older_than < 0:
        raise ValueError(f"`older_than` must be a number of seconds >= 0; got {older_than!r}.")
    base = location(output_dir, storage_options)
    if base.store is not None:
        raise TypeError("`output_dir` must be a folder or URL holding results, not a store.")
    now = _dt.datetime.now(_dt.UTC)
    removed = []
    if base.path is not None:
        if not base.path.is_dir():
            return []
        names = [p.name for p in base.path.iterdir() if p.is_dir()]
    else:
        import fsspec

        assert base.url is not None
        fs, root = fsspec.core.url_to_fs(base.url, **dict(base.storage_options))
        if not fs.exists(root):
            return []
        names = [str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
    for name in sorted(names):
        match = RESULT_NAME.match(name)
        if match is None or _age_seconds(match["stamp"], now) < older_than:
            continue
        child = base.child(name)
        target = child.path if child.path is not None else child.label
        if is_complete(target, storage_options):
            continue
        if child.path is not None:
            shutil.rmtree(child.path)
        else:
            fs.rm(f"{root.rstrip('/')}/{name}", recursive=True)
        with _lock:
            _pending.pop(child.label, None)
        removed.append(child.label)
    return removed
