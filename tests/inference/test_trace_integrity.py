"""A trace's stored bytes are verified: a missing or damaged chunk raises naming it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import zarr
from numpyro.infer import MCMC, NUTS

import dopax
from dopax.exceptions import TraceCorruptError
from inference import trace_case as case


def _kernel(X: Any, y: Any = None) -> None:
    b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=X @ b * s), obs=y)


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 2)).astype(np.float32)
    y = (X @ np.array([1.0, -1.0]) > 0).astype(np.float32)
    return X, y


def _mcmc(num_samples: int = 40) -> MCMC:
    return MCMC(NUTS(_kernel), num_warmup=30, num_samples=num_samples, progress_bar=False)


def _fit(trace: dopax.ZarrTrace, num_samples: int = 40) -> dopax.ImpactModel:
    X, y = _data()
    model = dopax.ImpactModel(_kernel, jax.random.key(0), _mcmc(num_samples))
    model.fit_on_batch(X, y, rng_key=jax.random.key(1), progress=False, trace=trace)
    return model


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("trace") / "trace.zarr"
    _fit(dopax.ZarrTrace(path, draws_per_chunk=10))
    return path


@pytest.fixture
def trace_copy(fitted: Path, tmp_path: Path) -> Path:
    path = tmp_path / "trace.zarr"
    shutil.copytree(fitted, path)
    return path


def test_every_chunk_of_a_trace_carries_a_checksum(fitted: Path) -> None:
    root = zarr.open_group(fitted, mode="r")
    arrays = [a for _, g in root.groups() for _, a in g.arrays()]
    assert len(arrays) > 10
    for array in arrays:
        assert type(array.metadata.codecs[-1]).__name__ == "Crc32cCodec", array.path
    # every chunk is written, a chunk equal to the fill value too (no divergence, key 0)
    assert (fitted / "sample_stats" / "diverging" / "c" / "0" / "1").exists()


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    start = max(0, len(data) // 2 - 8)
    for i in range(start, min(len(data), start + 16)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip", "delete"])
def test_a_damaged_draw_chunk_raises_naming_it(trace_copy: Path, damage: str) -> None:
    chunk = trace_copy / "posterior" / "b" / "c" / "0" / "2" / "0"
    _flip(chunk) if damage == "flip" else chunk.unlink()
    expected = "does not match its checksum" if damage == "flip" else "is missing from the trace"
    needles = ("'posterior/b/c/0/2/0'", expected, str(trace_copy), "sample again")
    trace = dopax.ZarrTrace.open(trace_copy)
    with pytest.raises(TraceCorruptError) as info:
        trace.to_datatree()["posterior"]["b"].values  # noqa: B018
    assert all(n in str(info.value) for n in needles), info.value
    # a model fitted to the trace reads its draws from it: the first call raises
    model = _fit(trace)
    X, _ = _data()
    with pytest.raises(TraceCorruptError) as info:
        model.predict_on_batch(X)
    assert all(n in str(info.value) for n in needles), info.value


def test_the_trace_of_the_shared_case_is_checked(reference_trace: Any) -> None:
    # the shared run (warm-up and unconstrained groups too) reads back through the checks
    trace = dopax.ZarrTrace.open(reference_trace["path"])
    case.assert_same_groups(case.draw_groups(trace), reference_trace["groups"])


def _extended(path: Path) -> dopax.ZarrTrace:
    """The trace, reopened with room for 20 more draws: a run would resume from its state."""
    trace = dopax.ZarrTrace.open(path).extend(20)
    assert trace.status == "interrupted"
    return trace


def _refuses_to_resume(path: Path, *needles: str) -> None:
    before = case.folder_digest(path)
    with pytest.raises(TraceCorruptError) as info:
        _fit(dopax.ZarrTrace.open(path))
    message = str(info.value)
    assert "does not resume" in message and "left as it was" in message, message
    for needle in needles:
        assert needle in message, message
    assert case.folder_digest(path) == before  # the trace is left as it was
    assert dopax.ZarrTrace.open(path).status == "interrupted"


def test_a_deleted_sampling_state_refuses_to_resume(trace_copy: Path) -> None:
    _extended(trace_copy)
    shutil.rmtree(trace_copy / "_sampling_state")
    _refuses_to_resume(trace_copy, "_sampling_state", "is missing")


def test_a_damaged_sampling_state_refuses_to_resume(trace_copy: Path) -> None:
    slot = _extended(trace_copy)._progress()["slot"][0]
    leaf = next((trace_copy / "_sampling_state").glob(f"state_*/c/{slot}/0/*"))
    _flip(leaf)
    _refuses_to_resume(trace_copy, "sampler state of chain", "does not match its checksum")


def test_a_stale_sampling_state_refuses_to_resume(trace_copy: Path) -> None:
    # the other slot's state is whole and checksummed, but is not the state the
    # marker recorded: copied over the current one, the digest tells them apart
    trace = _extended(trace_copy)
    slot = trace._progress()["slot"][0]
    for folder in (trace_copy / "_sampling_state").glob("state_*"):
        old, new = folder / "c" / str(1 - slot) / "0", folder / "c" / str(slot) / "0"
        if old.is_dir():
            shutil.rmtree(new)
            shutil.copytree(old, new)
        elif old.exists():
            shutil.copyfile(old, new)
    _refuses_to_resume(trace_copy, "chain 0", "not the one the trace's progress marker recorded")


def test_an_intact_extended_trace_resumes(trace_copy: Path) -> None:
    _extended(trace_copy)
    model = _fit(dopax.ZarrTrace.open(trace_copy))
    assert dopax.ZarrTrace.open(trace_copy).status == "complete"
    assert model.posterior["b"].shape == (60, 2)
