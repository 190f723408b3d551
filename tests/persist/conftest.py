"""The saved-model folder the persistence tests damage."""

from __future__ import annotations

import pytest

import dopax


@pytest.fixture
def folder(svi_model, tmp_path):
    """A fresh save of the session's SVI model (each test may change it)."""
    path = tmp_path / "model"
    dopax.save_model(svi_model, path)
    return path
