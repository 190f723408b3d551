"""One home for user-facing warnings: the stack level points at the user's line."""

from __future__ import annotations

import contextlib
import inspect
import os
import threading
import warnings
from collections.abc import Iterator

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def find_stack_level(skip_files: tuple[str, ...] = ()) -> int:
    """Return the stack level of the first frame outside the dopax package.

    Args:
        skip_files: Further files whose frames are passed over too (e.g. the
            standard library's ``dataclasses``, and ``"<string>"``, the file
            of the ``__init__`` it writes).
    """
    frame = inspect.currentframe()
    level = 0
    try:
        while frame is not None:
            name = frame.f_code.co_filename
            filename = os.path.abspath(name)
            if not filename.startswith(_PACKAGE_DIR) and name not in skip_files:
                return level
            frame = frame.f_back
            level += 1
    finally:
        del frame
    return level


def warn(
    message: str, category: type[Warning] = UserWarning, skip_files: tuple[str, ...] = ()
) -> None:
    """Emit ``message`` so that it points at the user's calling line.

    Args:
        message: The warning's text.
        category: The warning's class.
        skip_files: See :func:`find_stack_level`.
    """
    warnings.warn(message, category, stacklevel=find_stack_level(skip_files))


#: Serialises dopax's changes to the process-wide warning filters: Python's
#: ``catch_warnings`` saves and restores one global list, so two threads inside
#: it at once would restore each other's filters.
_FILTERS_LOCK = threading.RLock()


@contextlib.contextmanager
def ignoring(message: str, category: type[Warning]) -> Iterator[None]:
    """Ignore warnings of ``category`` starting with ``message`` inside the block (thread-safe).

    Args:
        message: The start of the warning's text (a regular expression).
        category: The warning's class.
    """
    with _FILTERS_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=message, category=category)
        yield
