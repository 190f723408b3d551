"""In-memory array datasets and a mini-batch loader that can pad and shard batches."""

from __future__ import annotations

from dopax.data.dataset import ArrayDataset
from dopax.data.loader import ArrayLoader

__all__ = ["ArrayDataset", "ArrayLoader"]
