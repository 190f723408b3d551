"""Sinks: destinations for streamed draws (memory, Zarr), subclasses of one base."""

from dopax.streaming.sinks.base import Sink, StaticData
from dopax.streaming.sinks.codecs import codec_for, compressors_for
from dopax.streaming.sinks.memory import MemorySink
from dopax.streaming.sinks.zarr_sink import ZarrSink

__all__ = ["MemorySink", "Sink", "StaticData", "ZarrSink", "codec_for", "compressors_for"]
