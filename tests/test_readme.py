"""The README's and the documentation's Python blocks run as written; the demo's report agrees."""

from __future__ import annotations

import linecache
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
#: The README's and the documentation's pages, whose Python blocks run as written.
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
BLOCKS = list(
    dict.fromkeys(  # a block shown on two pages runs once
        block
        for page in PAGES
        for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    )
)


def test_readme_has_python_blocks() -> None:
    readme = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    assert readme
    assert len(BLOCKS) >= 3


def _run(code: str, cwd: Path) -> str:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "MPLBACKEND": "Agg",
        "JAX_PLATFORMS": "cpu",
    }
    env.pop("XLA_FLAGS", None)
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_readme_blocks_run(tmp_path: Path, monkeypatch: Any) -> None:
    # Blocks that set up JAX's devices need a fresh process; the others run here,
    # one after another, each in a namespace of its own, in an empty folder.
    first = [b for b in BLOCKS if "set_host_device_count" in b]
    for block in first:
        assert _run(block, tmp_path).strip().splitlines()[-1] == "4"
    monkeypatch.chdir(tmp_path)
    import matplotlib
    import matplotlib.pyplot as plt

    matplotlib.use("Agg")
    for block in BLOCKS:
        if block in first:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the README's own output is not under test
            # The block's text is registered as its source, as a script's file
            # would be, so kernels defined in it have source code to save.
            name = f"README.md and docs, block {BLOCKS.index(block) + 1}"
            linecache.cache[name] = (len(block), None, block.splitlines(True), name)
            exec(compile(block, name, "exec"), {"__name__": "__main__"})
        plt.close("all")
    assert (tmp_path / "effect.png").stat().st_size > 0
    assert (tmp_path / "calibration.png").stat().st_size > 0


def _demo() -> Any:
    sys.path.insert(0, str(REPO / "examples"))
    try:
        import lalonde
    finally:
        sys.path.remove(str(REPO / "examples"))
    return lalonde


def test_demo_sentence_agrees_with_its_table() -> None:
    index = pd.MultiIndex.from_tuples([("ate", "treated - control")], names=["kind", "name"])
    # 1973 of 2000 draws positive: a tie that format() and round() used to break apart
    table = pd.DataFrame(
        {"mean": [1.5], "sd": [0.6], "hdi_low": [0.2], "hdi_high": [2.8], "p_positive": [0.9865]},
        index=index,
    )
    y = np.array([1.0, 2.0, 3.0, 4.0])
    text = _demo().report(table, y, np.array([0.0, 1.0, 0.0, 1.0]))
    sentence = re.search(r"P\(effect > 0\) = ([0-9.]+)", text)
    assert sentence is not None
    row = next(line for line in text.splitlines() if line.startswith("ate"))
    assert sentence.group(1) in row.split()


def test_demo_leaves_only_its_plot(tmp_path: Path, monkeypatch: Any) -> None:
    lalonde = _demo()
    from dopax import ImpactModel

    def quick_fit(self: Any, X: Any, y: Any, *, num_samples: int, progress: bool, **kw: Any) -> Any:
        # a posterior by hand: the demo's streaming and effects are under test, not SVI
        from dopax.inference.svi import SVIRunResult

        rng = np.random.default_rng(0)
        self.set_posterior_sample(
            {
                "alpha": rng.normal(5.0, 0.1, 100),
                "beta": rng.normal(0.0, 0.1, (100, X.shape[1])),
                "tau": rng.normal(1.5, 0.5, 100),
                "delta": rng.normal(0.0, 0.5, 100),
                "sigma": np.full(100, 6.0),
            }
        )
        self.vi_result = SVIRunResult({}, np.zeros(10, np.float32))
        return self

    monkeypatch.setattr(ImpactModel, "fit", quick_fit)
    out = tmp_path / "output"
    lalonde.main(out)
    assert sorted(p.name for p in out.iterdir()) == ["lalonde_effect.png"]
