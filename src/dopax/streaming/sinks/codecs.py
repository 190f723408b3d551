"""Codecs of stored variables, and encoders giving the bytes Zarr itself stores.

Every chunk dopax writes ends with a CRC-32C checksum of the bytes before it
(Zarr v3's ``crc32c`` codec, after the compressor): Zarr checks it on every
read, and :class:`~dopax.output.store.StrictStore` checks it first to name
the file that does not match.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numcodecs
import numpy as np
import zarr
import zarr.codecs
from zarr.abc.codec import BytesBytesCodec

from dopax.config import ExecutionConfig
from dopax.streaming.fileio import CRC32C

__all__ = [
    "CHECKSUM",
    "attr_value",
    "chunk_encoder",
    "codec_for",
    "compressors_for",
    "fill_value",
    "with_checksum",
]

#: The checksum codec ending every array's codecs.
CHECKSUM = zarr.codecs.Crc32cCodec()


def with_checksum(compressors: Sequence[BytesBytesCodec]) -> tuple[BytesBytesCodec, ...]:
    """Return ``compressors`` followed by the checksum codec."""
    return (*compressors, CHECKSUM)


def attr_value(value: Any) -> Any:
    """A JSON-ready attribute value (NumPy arrays and scalars become Python ones)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def fill_value(dtype: np.dtype[Any]) -> dict[str, Any]:
    """``fill_value`` as xarray sets it: NaN for floating point, Zarr's default otherwise."""
    return {"fill_value": np.nan} if dtype.kind == "f" else {}


#: Blosc shuffle filter of each Blosc-based codec name.
_BLOSC_SHUFFLE = {
    "lz4": zarr.codecs.BloscShuffle.shuffle,
    "blosc-lz4": zarr.codecs.BloscShuffle.shuffle,
    "bitshuffle-lz4": zarr.codecs.BloscShuffle.bitshuffle,
}


def codec_for(config: ExecutionConfig, dtype: Any) -> str | None:
    """Return the codec a variable of ``dtype`` is stored with under ``config``.

    ``"auto"`` stores floating-point variables uncompressed and compresses the
    others (integers, booleans) with LZ4 after a bit shuffle (Blosc): sampled
    floats carry close to 32 bits of entropy per value and shrink by about 8%
    at a cost of a quarter of the call's time, while counts and indicators
    have few significant bits, which the bit shuffle gathers into long runs.
    For Bernoulli and Poisson draws that is about 8 times faster than zstd
    and stores fewer bytes (``python benchmarks/micro.py codec``).
    """
    if config.compressor == "auto":
        return None if np.dtype(dtype).kind in "fc" else "bitshuffle-lz4"
    return config.compressor


def compressors_for(codec: str | None, level: int, dtype: Any) -> tuple[BytesBytesCodec, ...]:
    """Return the Zarr codecs for ``codec`` on variables of ``dtype``, the checksum last."""
    if codec is None:
        return with_checksum(())
    if codec == "zstd":
        return with_checksum((zarr.codecs.ZstdCodec(level=level),))
    if codec in _BLOSC_SHUFFLE:
        return with_checksum(
            (
                zarr.codecs.BloscCodec(
                    typesize=np.dtype(dtype).itemsize,
                    cname="lz4",
                    clevel=min(max(level, 0), 9),
                    shuffle=_BLOSC_SHUFFLE[codec],
                ),
            )
        )
    raise ValueError(f"Unknown compressor {codec!r}.")  # pragma: no cover


def chunk_encoder(
    compressors: Sequence[BytesBytesCodec],
) -> Callable[[np.ndarray], tuple[Any, ...]]:
    """Return a function giving the stored bytes of a chunk under ``compressors``.

    The encoder is built from the Zarr codec's own settings, so the bytes are
    those Zarr itself stores (asserted in the tests). It returns the bytes in
    pieces for :meth:`~dopax.streaming.fileio.FileWriter.write`: the
    (compressed) chunk, and :data:`~dopax.streaming.fileio.CRC32C` when the
    codecs end with a checksum (the writer computes it as it copies the
    chunk, and an uncompressed chunk is not copied to append four bytes).
    """
    codecs = list(compressors)
    checked = bool(codecs) and isinstance(codecs[-1], zarr.codecs.Crc32cCodec)
    compress = _compressor(codecs[:-1] if checked else codecs)
    if not checked:
        return lambda chunk: (compress(chunk),)

    def encode(chunk: np.ndarray) -> tuple[Any, ...]:
        # the writer computes the checksum as it copies the bytes (FileWriter)
        return compress(chunk), CRC32C

    return encode


def _compressor(compressors: Sequence[BytesBytesCodec]) -> Callable[[np.ndarray], Any]:
    if not compressors:
        return lambda chunk: chunk
    (codec,) = compressors
    if isinstance(codec, zarr.codecs.ZstdCodec):
        zstd = numcodecs.Zstd(level=codec.level)
        return lambda chunk: zstd.encode(chunk)
    if isinstance(codec, zarr.codecs.BloscCodec):
        shuffle = {
            zarr.codecs.BloscShuffle.noshuffle: numcodecs.Blosc.NOSHUFFLE,
            zarr.codecs.BloscShuffle.shuffle: numcodecs.Blosc.SHUFFLE,
            zarr.codecs.BloscShuffle.bitshuffle: numcodecs.Blosc.BITSHUFFLE,
        }[codec.shuffle]
        blosc = numcodecs.Blosc(
            cname=codec.cname.value,
            clevel=codec.clevel,
            shuffle=shuffle,
            blocksize=codec.blocksize,
            typesize=codec.typesize,
        )
        return lambda chunk: blosc.encode(chunk)
    raise ValueError(f"No chunk encoder for {codec!r}.")  # pragma: no cover
