from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from inference import trace_case as case


@pytest.fixture(scope="session")
def reference_trace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An uninterrupted traced run of the shared case (``draws_per_chunk=25``)."""
    path = Path(tmp_path_factory.mktemp("reference")) / "trace.zarr"
    trace = case.new_trace(path, dpc=25)
    model = case.fit(trace)
    return {
        "path": path,
        "trace": trace,
        "model": model,
        "groups": case.draw_groups(trace),
    }
