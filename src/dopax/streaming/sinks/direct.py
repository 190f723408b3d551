"""Writing a block that is exactly one chunk straight to its file, as Zarr would store it."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from dopax.output.schema import SiteLayout
from dopax.streaming.fileio import FileWriter

__all__ = ["write_whole_chunk"]


def write_whole_chunk(
    folder: Path,
    layout: SiteLayout,
    target: zarr.Array[Any],
    region: tuple[int | slice, ...],
    piece: np.ndarray,
    chunks: tuple[int, ...],
    encoder: Callable[[np.ndarray], tuple[Any, ...]],
    files: FileWriter,
    guard: Any,
) -> bool:
    """Encode and write a block that is exactly one chunk straight to its file.

    The bytes are those Zarr itself would store (the array's codecs applied
    to the chunk in C order, edge chunks padded to the full chunk shape);
    encoding runs in the calling writer thread without Zarr's event loop,
    which is faster with several writers (they do not queue on the loop).
    The chunk file is written under a temporary name and renamed, so a chunk
    is either whole or absent, and writing it again (a recomputed block) is
    harmless. Returns ``False`` (nothing written) for any other block, and
    for a 0-d variable (Zarr writes its one value).

    Args:
        folder: The variable's folder.
        layout: The variable's layout.
        target: The Zarr array (for its chunk key encoding).
        region: Where the block goes in ``(chain, draw, *shape)``.
        piece: The block.
        chunks: The array's chunk shape.
        encoder: Gives a chunk's stored bytes, in pieces (see
            :func:`~dopax.streaming.sinks.codecs.chunk_encoder`).
        files: The file writer.
        guard: The result folder's guard: ``makedirs`` creates folders below
            the result folder only (a removed result is never recreated) and
            ``check`` raises if the result folder itself was deleted.
    """
    full = layout.full_shape
    if not full or len(region) != len(full):
        return False
    coords = []
    extent = []
    for sl, c, n in zip(region, chunks, full, strict=True):
        if isinstance(sl, int | np.integer):
            start, stop = int(sl), int(sl) + 1
        else:
            start, stop = sl.start or 0, n if sl.stop is None else sl.stop
        if start % c or not (stop - start == c or (stop == n and stop - start < c)):
            return False
        coords.append(start // c)
        extent.append(stop - start)
    if piece.size != int(np.prod(extent)):
        return False
    data = np.ascontiguousarray(
        piece.reshape(extent), dtype=np.dtype(layout.dtype).newbyteorder("<")
    )
    if data.shape != chunks:
        padded = np.zeros(chunks, dtype=data.dtype)
        padded[tuple(slice(0, k) for k in data.shape)] = data
        data = padded
    key = target.metadata.chunk_key_encoding.encode_chunk_key(tuple(coords))  # type: ignore[union-attr]
    encoded = encoder(data)
    path = folder / key
    guard.makedirs(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
    with guard.explaining_loss():
        files.write(tmp, *encoded)
        os.replace(tmp, path)
    return True
