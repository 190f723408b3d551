"""The trace example (``examples/trace_logistic.py``) runs end to end and recovers its effects."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "trace_logistic.py"


# ArviZ's trace plot calls a matplotlib helper that matplotlib 3.11 deprecates
@pytest.mark.filterwarnings("ignore:Passing a dict or None as alias_mapping")
def test_trace_example_recovers_the_simulated_coefficients(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("trace_logistic", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["trace_logistic"] = module
    try:
        spec.loader.exec_module(module)
        facts = module.run(600, draws=150, out=tmp_path)
    finally:
        sys.modules.pop("trace_logistic", None)
    assert facts["status"] == "complete"
    assert facts["draws"] == (150, 150, 150, 150)
    np.testing.assert_allclose(facts["beta"], facts["beta_true"], atol=0.35)
    assert abs(facts["alpha"] - 0.5) < 0.35
    assert facts["max_rhat"] < 1.1
    assert abs(facts["predicted_rate"] - facts["observed_rate"]) < 0.05
    assert (tmp_path / "trace_logistic.png").stat().st_size > 0
