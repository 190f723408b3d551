"""The seed tutorial (``examples/tutorial_bnn.py``), as written, runs end to end.

Its network ends in ``.squeeze()``; fit, ``predict`` and ``cleanup`` run at a
small size.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("flax")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tutorial_bnn.py"


@pytest.mark.filterwarnings("ignore:The SVI loss was still falling:UserWarning")
def test_tutorial_runs_end_to_end(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("tutorial_bnn", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["tutorial_bnn"] = module
    try:
        spec.loader.exec_module(module)
        assert ".squeeze()" in EXAMPLE.read_text()
        facts = module.run(4_000, num_samples=100, out=tmp_path)
    finally:
        sys.modules.pop("tutorial_bnn", None)
    assert facts["sites"] == ["p", "y"]
    assert facts["shape"] == {"chain": 1, "draw": 100, "p_dim_0": 4_000}
    assert 0.0 < facts["mean_p"] < 1.0
    assert facts["losses"] == 20  # 10 epochs of 2 mini-batches
    assert (tmp_path / "tutorial_loss.png").exists()
    assert not os.path.exists(facts["temp_dir"])  # cleanup removed the results
