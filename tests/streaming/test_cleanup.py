"""A failed or interrupted call removes what it wrote, at every stage; disks and folders."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.optim import Adam

import dopax
import dopax.exceptions
import dopax.streaming.sinks.zarr_io as zarr_io
import dopax.streaming.sinks.zarr_sink as zarr_sink
from dopax import ImpactModel

N, D = 40, 8


def kernel(X: Any, t: Any = None, y: Any = None) -> None:
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]))
    shift = 0.0 if t is None else t
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(X @ beta + shift, 1.0), obs=y)


def _model(k: Any = kernel) -> ImpactModel:
    model = ImpactModel(k, jax.random.key(0), SVI(k, AutoNormal(k), Adam(0.1), Trace_ELBO()))
    rng = np.random.default_rng(0)
    model.set_posterior_sample({"beta": rng.normal(size=(D, 2)).astype(np.float32)})
    return model


@pytest.fixture(scope="module")
def model() -> ImpactModel:
    return _model()


X = np.random.default_rng(1).normal(size=(N, 2)).astype(np.float32)


def _empty(folder: Path) -> bool:
    return not any(folder.iterdir())


# ------------------------------------------------------------------ finishing a result
def _consolidate_fails(monkeypatch: Any) -> None:
    async def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EIO, "consolidation failed")

    monkeypatch.setattr("zarr.api.asynchronous.consolidate_metadata", broken)


def _marker_fails(monkeypatch: Any) -> None:
    from zarr.core.group import AsyncGroup

    async def broken(self: Any, *args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EIO, "the completion marker could not be written")

    monkeypatch.setattr(AsyncGroup, "update_attributes", broken)


def _reopen_fails(monkeypatch: Any) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise MemoryError("no memory left to open the result")

    monkeypatch.setattr(zarr_sink, "open_result", broken)


@pytest.mark.parametrize("fault", [_consolidate_fails, _marker_fails, _reopen_fails])
def test_failure_while_finishing_removes_the_result(
    model: ImpactModel, tmp_path: Path, monkeypatch: Any, fault: Any
) -> None:
    fault(monkeypatch)
    with pytest.raises((OSError, MemoryError)):
        model.predict(X, output_dir=tmp_path, batch_size=10, progress=False)
    assert _empty(tmp_path)


def test_failure_after_keeping_scenario_draws_removes_them(
    model: ImpactModel, tmp_path: Path, monkeypatch: Any
) -> None:
    import dopax.execution.scenarios as scenarios_module

    def broken(*args: Any, **kwargs: Any) -> None:
        raise MemoryError("no memory left for the effect tree")

    monkeypatch.setattr(scenarios_module, "effect_tree", broken)
    scenarios = {"a": {"t": np.zeros(N, np.float32)}, "b": {"t": np.ones(N, np.float32)}}
    with pytest.raises(MemoryError):
        model.compare_scenarios(
            X, scenarios, baseline="a", keep_draws=True, output_dir=tmp_path, progress=False
        )
    assert _empty(tmp_path)


# ------------------------------------------------------------------ the folder goes away
def test_folder_deleted_under_the_writers_is_not_recreated(tmp_path: Path) -> None:
    deleted: list[Path] = []

    def delete_result(_: Any) -> None:
        # runs while a block computes, once the call's folder holds chunks
        for folder in tmp_path.glob("*.zarr"):
            if not deleted and any(folder.rglob("c/*")):
                gone = tmp_path.parent / f"{tmp_path.name}-deleted"
                folder.rename(gone)  # at once, while writers may still write into it
                shutil.rmtree(gone, ignore_errors=True)
                deleted.append(folder)

    def noisy(X: Any, y: Any = None) -> None:
        beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([X.shape[1]]))
        jax.debug.callback(delete_result, beta)
        with numpyro.plate("obs", X.shape[0]):
            numpyro.sample("y", dist.Normal(X @ beta, 1.0), obs=y)

    with pytest.raises(FileNotFoundError, match="was deleted while the result was being written"):
        _model(noisy).predict(X, output_dir=tmp_path, batch_size=4, progress=False)
    assert deleted, "the fault was not injected"
    time.sleep(0.2)
    assert _empty(tmp_path)


def test_a_chunk_folder_whose_root_goes_while_it_is_made_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race of the test above, made certain: the result folder is deleted
    # after the guard's check and before a chunk's sub-folder is created.
    root = tmp_path / "result.zarr"
    root.mkdir()
    guard = zarr_io.FolderGuard(root)
    (root / "y").mkdir()
    real_mkdir = os.mkdir

    def mkdir_after_the_delete(path: Any, *args: Any, **kwargs: Any) -> None:
        shutil.rmtree(root, ignore_errors=True)
        real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(zarr_io.os, "mkdir", mkdir_after_the_delete)
    with pytest.raises(FileNotFoundError, match="was deleted while the result was being written"):
        guard.makedirs(root / "y" / "c" / "0")
    assert not root.exists()


def test_ctrl_c_while_the_store_is_created_leaves_no_skeleton(
    model: ImpactModel, tmp_path: Path, monkeypatch: Any
) -> None:
    create = zarr_sink.create_nodes

    async def interrupted(*args: Any) -> Any:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the metadata is written
        await asyncio.sleep(0.3)
        return await create(*args)

    monkeypatch.setattr(zarr_sink, "create_nodes", interrupted)
    # Python's own Ctrl-C handler, also when the suite was started in the
    # background by a shell (which starts it with SIGINT ignored)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            model.predict(X, output_dir=tmp_path, batch_size=10, progress=False)
    finally:
        signal.signal(signal.SIGINT, old)
    time.sleep(0.5)  # nothing is still being written in the background
    assert _empty(tmp_path)


# ------------------------------------------------------------------ disks and folder names
@pytest.fixture
def small_tmpfs() -> Any:
    folder = tempfile.mkdtemp()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", folder],
            capture_output=True,
            check=False,
        )
    except OSError:
        done = None
    if done is None or done.returncode != 0:
        os.rmdir(folder)
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        yield Path(folder)
    finally:
        subprocess.run(["umount", folder], check=False)
        os.rmdir(folder)


def test_full_tmpfs_reports_a_full_disk(small_tmpfs: Path) -> None:
    model = _model()
    X_big = np.random.default_rng(2).normal(size=(20_000, 2)).astype(np.float32)
    with pytest.raises(OSError) as info:
        model.predict(X_big, output_dir=small_tmpfs, batch_size=2_000, progress=False)
    assert info.value.errno == errno.ENOSPC
    assert "disk holding the output is full" in " ".join(getattr(info.value, "__notes__", []))
    assert _empty(small_tmpfs)


def test_output_dir_names(model: ImpactModel, tmp_path: Path, monkeypatch: Any) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    tree = model.predict(X, output_dir="~/results", progress=False)
    assert Path(tree.attrs["artifact_path"]).parent == home / "results"
    assert _empty(work)  # no folder named '~' in the working directory
    with pytest.raises(ValueError, match="`output_dir` is an empty string"):
        model.predict(X, output_dir="", progress=False)


# ------------------------------------------------------------------ the store stops answering
class Outage:
    """An in-memory fsspec file system that stops answering writes and removals on cue."""

    def __init__(self, monkeypatch: Any, fail_after: int) -> None:
        from fsspec.implementations.memory import MemoryFileSystem

        self.down = False
        self.writes = 0
        real_pipe, real_rm = MemoryFileSystem.pipe_file, MemoryFileSystem.rm

        def pipe_file(fs: Any, path: str, *args: Any, **kwargs: Any) -> Any:
            self.writes += 1
            if self.writes > fail_after:
                self.down = True
            if self.down:
                raise OSError(errno.EIO, "the store does not answer")
            return real_pipe(fs, path, *args, **kwargs)

        def rm(fs: Any, path: Any, *args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise OSError(errno.EIO, "the store does not answer")
            return real_rm(fs, path, *args, **kwargs)

        monkeypatch.setattr(MemoryFileSystem, "pipe_file", pipe_file)
        monkeypatch.setattr(MemoryFileSystem, "rm", rm)


def _results(base: str) -> list[str]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(base)
    return (
        sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)) if fs.exists(root) else []
    )


def test_a_result_left_by_an_outage_goes_once_the_store_answers(
    model: ImpactModel, monkeypatch: Any
) -> None:
    from dopax.output.cleanup import pending_removals

    base = "memory://dopax-outage/results"
    outage = Outage(monkeypatch, fail_after=12)
    with pytest.raises(OSError, match="does not answer") as info:
        model.predict(X, output_dir=base, batch_size=10, progress=False)
    (left,) = _results(base)  # the removal failed too: the partial result is still there
    url = f"{base}/{left}"
    notes = " ".join(getattr(info.value, "__notes__", []))
    assert url in notes and "dopax.remove_incomplete('memory://dopax-outage/results')" in notes
    assert url in pending_removals()
    with pytest.raises(dopax.exceptions.IncompleteResultError):
        dopax.open_result(url)
    outage.down, outage.writes = False, -(10**9)  # the store answers again
    tree = model.predict(X, output_dir=base, batch_size=10, progress=False)
    assert _results(base) == [tree.attrs["artifact_path"].rsplit("/", 1)[-1]]
    assert url not in pending_removals()


def test_remove_incomplete_removes_only_old_incomplete_results(
    model: ImpactModel, tmp_path: Path
) -> None:
    done = model.predict(X, output_dir=tmp_path, batch_size=10, progress=False)
    complete = Path(done.attrs["artifact_path"])
    partial = tmp_path / "predict-20200101T000000-0123abcd.zarr"
    shutil.copytree(complete, partial)
    zarr_json = partial / "zarr.json"
    zarr_json.write_text(zarr_json.read_text().replace('"dopax_complete": true', '"x": 1'))
    recent = tmp_path / f"predict-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-0123abcd.zarr"
    shutil.copytree(partial, recent)  # may still be being written: kept
    other = tmp_path / "notes"
    other.mkdir()
    assert dopax.remove_incomplete(tmp_path) == [str(partial)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [complete.name, recent.name, "notes"]
    )
    assert dopax.remove_incomplete(tmp_path, older_than=0) == [str(recent)]
    assert dopax.open_result(complete)["posterior_predictive"]["y"].shape[-1] == N
