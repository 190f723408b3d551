"""A saved model's folder: a local path or an fsspec URL, read and written in one place."""

from __future__ import annotations

import os
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from dopax.output.location import location

__all__ = ["Folder"]


class Folder:
    """A folder named by a local path or an fsspec URL (``memory://``, ``s3://``, ...).

    Paths and URLs are parsed as ``output_dir`` is (:func:`dopax.output.location.location`):
    the same schemes, and an unknown one raises.

    Args:
        path: Local path or URL.
        storage_options: fsspec options for URLs (credentials, endpoints).

    Raises:
        ValueError: For an empty path or a URL with an unknown scheme.
    """

    def __init__(self, path: str | os.PathLike[str], storage_options: dict[str, Any] | None = None):
        self.where = location(path, storage_options, name="path")
        if self.where.path is not None:
            self.local = True
            self.fs: Any = LocalFileSystem()
            self.root = str(self.where.path)
            self.url = self.root
        else:
            assert self.where.url is not None
            self.local = False
            self.url = self.where.url
            self.fs, root = fsspec.core.url_to_fs(self.url, **dict(self.where.storage_options))
            self.root = root.rstrip("/") or "/"

    def __str__(self) -> str:
        return self.url

    def path(self, name: str) -> str:
        """Return the filesystem path of ``name`` inside the folder."""
        return f"{self.root}/{name}"

    def url_of(self, name: str) -> str:
        """Return the local path or URL of ``name`` inside the folder."""
        return self.where.child(name).label

    def exists(self, name: str | None = None) -> bool:
        """Return whether the folder (or ``name`` inside it) exists."""
        return bool(self.fs.exists(self.root if name is None else self.path(name)))

    def is_empty(self) -> bool:
        """Return whether the folder is missing or holds nothing."""
        return not self.exists() or not self.fs.ls(self.root, detail=False)

    def make(self) -> None:
        """Create the folder (and its parents)."""
        self.fs.makedirs(self.root, exist_ok=True)

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``data`` to ``name``."""
        with self.fs.open(self.path(name), "wb") as f:
            f.write(data)

    def read_bytes(self, name: str) -> bytes:
        """Return the bytes of ``name``."""
        with self.fs.open(self.path(name), "rb") as f:
            return bytes(f.read())

    def write_text(self, name: str, text: str) -> None:
        """Write ``text`` (UTF-8) to ``name``."""
        self.write_bytes(name, text.encode("utf-8"))

    def read_text(self, name: str) -> str:
        """Return the text (UTF-8) of ``name``."""
        return self.read_bytes(name).decode("utf-8")

    def zarr_store(self, name: str, *, read_only: bool) -> Any:
        """Return a Zarr store for the group ``name`` inside the folder."""
        return self.where.child(name).open_store(read_only=read_only)

    def remove(self, *, keep_folder: bool = False) -> None:
        """Delete everything in the folder, and the folder unless ``keep_folder`` is set."""
        if not self.exists():
            return
        if keep_folder:
            for child in self.fs.ls(self.root, detail=False):
                self.fs.rm(child, recursive=True)
        else:
            self.fs.rm(self.root, recursive=True)
