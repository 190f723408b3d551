"""The panel example (``examples/panel_its.py``) recovers its simulated post-period effect.

A small panel (200 units x 52 weeks): fit, predict (split by unit, in the
site's ``(weeks, units)`` order) and ``compare_scenarios``, whose 95% interval
for the treated units must hold the true effect.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "panel_its.py"


def test_panel_example_recovers_the_effect(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("panel_its", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["panel_its"] = module
    try:
        spec.loader.exec_module(module)
        figure = tmp_path / "panel_its.png"
        found = module.run(
            200, num_steps=1_500, num_samples=100, batch_size=64, out=tmp_path, plot=figure
        )
    finally:
        sys.modules.pop("panel_its", None)
    assert found["shape"] == (1, 100, 52, 200)  # (chain, draw, week, unit)
    assert found["chunks"] == (1, 100, 52, 64)  # chunked along the units by block
    assert found["low"] <= found["true"] <= found["high"]
    assert found["high"] - found["low"] < 0.6
    assert found["untreated"] == 0.0  # nothing changes for units never treated
    assert figure.read_bytes().startswith(b"\x89PNG")
