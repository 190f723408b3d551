"""Where results live: local folders, fsspec URLs and zarr store objects.

A location is parsed once (:func:`location`) and then knows how to name a
call's sub-folder and how to open a Zarr store on itself. Local paths (and
``file://`` URLs) stay local folders, which the sinks write with their fast
direct-file path; other URLs are opened with zarr's ``FsspecStore``; a zarr
store object is used as it is. An unknown scheme raises: nothing is ever
written to a local folder named after a URL.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zarr.abc.store import Store

__all__ = ["SCHEMES", "Location", "location"]

#: URL schemes results can be written to and read from (besides local paths).
SCHEMES = ("file", "s3", "gs", "gcs", "az", "abfs", "abfss", "memory")

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://(.*)$")


@dataclasses.dataclass(frozen=True)
class Location:
    """A parsed result location.

    Attributes:
        path: The local folder, for local locations.
        url: The URL, for remote locations.
        store: The zarr store, for store objects.
        storage_options: fsspec options for ``url``.
    """

    path: Path | None = None
    url: str | None = None
    store: Store | None = None
    storage_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        """Whether this is a local folder."""
        return self.path is not None

    @property
    def label(self) -> str:
        """How the location is shown in messages and recorded as ``artifact_path``."""
        if self.path is not None:
            return str(self.path)
        if self.url is not None:
            return self.url
        return repr(self.store)

    def child(self, name: str) -> Location:
        """Return the location ``name`` under this one (a sub-folder or sub-prefix).

        Args:
            name: The child's name.

        Raises:
            TypeError: For a store object, which has no sub-folders.
        """
        if self.path is not None:
            return dataclasses.replace(self, path=self.path / name)
        if self.url is not None:
            return dataclasses.replace(self, url=f"{self.url.rstrip('/')}/{name}")
        raise TypeError(
            "A zarr store object holds one result: pass an empty store for each call, or "
            "a folder or URL as `output_dir`."
        )

    def open_store(self, *, read_only: bool) -> Store:
        """Open a zarr store on this location.

        Args:
            read_only: Open for reading only.
        """
        if self.store is not None:
            return self.store
        if self.path is not None:
            from zarr.storage import LocalStore

            return LocalStore(self.path, read_only=read_only)
        from zarr.storage import FsspecStore

        assert self.url is not None
        return FsspecStore.from_url(
            self.url, storage_options=dict(self.storage_options), read_only=read_only
        )

    def __reduce__(self) -> Any:
        if self.store is not None:
            return (Location, (None, None, self.store, dict(self.storage_options)))
        return (Location, (self.path, self.url, None, dict(self.storage_options)))


def location(
    value: Any, storage_options: Mapping[str, Any] | None = None, *, name: str = "output_dir"
) -> Location:
    """Parse a path, URL or zarr store into a :class:`Location`.

    Args:
        value: A local path (``str`` or path-like, ``~`` expanded), an fsspec
            URL with one of :data:`SCHEMES`, or a zarr ``Store``.
        storage_options: fsspec options for a URL (credentials, endpoint).
        name: The argument's name, for messages.

    Raises:
        ValueError: For an empty path or an unknown scheme.
        TypeError: For anything else.
    """
    options = dict(storage_options or {})
    if isinstance(value, Store):
        if options:
            raise ValueError(f"`storage_options` apply to URLs only, not to a store `{name}`.")
        return Location(store=value)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise TypeError(
            f"`{name}` must be a folder path, an fsspec URL or a zarr Store; "
            f"got {type(value).__name__}."
        )
    if not value.strip():
        raise ValueError(f"`{name}` is empty; pass a folder path or URL (or None for a default).")
    match = _URL.match(value)
    if match is None:
        if options:
            raise ValueError(f"`storage_options` apply to URLs only; `{name}` is a local path.")
        return Location(path=Path(value).expanduser().resolve())
    scheme, rest = match[1].lower(), match[2]
    if scheme not in SCHEMES:
        raise ValueError(
            f"`{name}` has the unknown scheme {scheme!r}; supported are local paths and "
            f"{', '.join(s + '://' for s in SCHEMES)} URLs, or a zarr Store."
        )
    if scheme == "file":
        return Location(path=Path(rest).expanduser().resolve())
    return Location(url=value.rstrip("/"), storage_options=options)
