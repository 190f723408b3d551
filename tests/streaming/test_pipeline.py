"""The bounded writer pool, with real sinks."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import dopax.streaming.memory as memory
import dopax.streaming.pipeline as pipeline
from dopax.exceptions import StreamingError
from dopax.output.schema import SiteLayout
from dopax.streaming.pipeline import WriterPool
from dopax.streaming.sinks import MemorySink, ZarrSink

LAYOUT = SiteLayout("posterior_predictive", "y", 2, 10, (4,), "float32", (1, 2, 4))
FLAT = np.arange(20 * 4, dtype="float32").reshape(20, 4)


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("dopax-writer-")]


class FailingSink(MemorySink):
    """A memory sink whose ``fail_at``-th write raises ``OSError("disk full")``."""

    def __init__(self, fail_at: int, delay: float = 0.0) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.delay = delay
        self.calls = 0
        self._count_lock = threading.Lock()

    def write(self, group: str, name: str, index: tuple[slice, ...], block: np.ndarray) -> None:
        with self._count_lock:
            self.calls += 1
            call = self.calls
        time.sleep(self.delay)
        if call == self.fail_at:
            raise OSError("disk full")
        super().write(group, name, index, block)


class GatedSink(MemorySink):
    """A memory sink whose writes wait for ``gate``; counts writes in progress."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.waiting = 0
        self._count_lock = threading.Lock()

    def write(self, group: str, name: str, index: tuple[slice, ...], block: np.ndarray) -> None:
        with self._count_lock:
            self.waiting += 1
        assert self.gate.wait(10)
        super().write(group, name, index, block)


def _wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.parametrize("kind", ["memory", "zarr"])
def test_writes_everything(kind: str, tmp_path: Path) -> None:
    sink = MemorySink() if kind == "memory" else ZarrSink(tmp_path / "result")
    sink.open([LAYOUT])
    with WriterPool(sink, threads=3, depth=2) as pool:
        assert sorted(t.name for t in _writer_threads()) == [f"dopax-writer-{i}" for i in range(3)]
        for s0 in range(0, 20, 2):
            block = FLAT[s0 : s0 + 2]
            pool.submit(
                LAYOUT.group,
                LAYOUT.name,
                (slice(s0, s0 + 2),),
                jnp.asarray(block) if s0 % 4 else block,
            )
    assert not _writer_threads()
    tree = sink.close()
    np.testing.assert_array_equal(
        tree["posterior_predictive/y"].values, FLAT.reshape(2, 10, 4), strict=True
    )


def test_submit_blocks_when_full() -> None:
    sink = GatedSink()
    sink.open([LAYOUT])
    submitted = 0
    threads, depth = 2, 3

    def produce(pool: WriterPool) -> None:
        nonlocal submitted
        for s0 in range(0, 20, 2):
            pool.submit(LAYOUT.group, LAYOUT.name, (slice(s0, s0 + 2),), FLAT[s0 : s0 + 2])
            submitted += 1

    with WriterPool(sink, threads=threads, depth=depth) as pool:
        producer = threading.Thread(target=produce, args=(pool,))
        producer.start()
        _wait_until(lambda: sink.waiting == threads and submitted == threads + depth)
        time.sleep(0.1)
        assert submitted == threads + depth  # the producer is blocked in submit
        sink.gate.set()
        producer.join(5)
        assert not producer.is_alive()
    assert submitted == 10
    np.testing.assert_array_equal(
        sink.close()["posterior_predictive/y"].values, FLAT.reshape(2, 10, 4)
    )


def test_writer_error_stops_producer_promptly() -> None:
    sink = FailingSink(fail_at=3, delay=0.01)
    sink.open([LAYOUT])
    start = time.monotonic()
    with (
        pytest.raises(OSError, match="disk full") as info,
        WriterPool(sink, threads=2, depth=1) as pool,
    ):
        for i in range(10_000):
            s0 = (2 * i) % 20
            pool.submit(LAYOUT.group, LAYOUT.name, (slice(s0, s0 + 2),), FLAT[s0 : s0 + 2])
    assert type(info.value) is OSError
    assert time.monotonic() - start < 5
    assert not _writer_threads()
    assert sink.calls < 10
    sink.abort()


def test_writer_error_raised_on_exit() -> None:
    sink = FailingSink(fail_at=3)
    sink.open([LAYOUT])
    with pytest.raises(OSError, match="disk full"), WriterPool(sink, threads=2, depth=4) as pool:
        for s0 in (0, 2, 4):
            pool.submit(LAYOUT.group, LAYOUT.name, (slice(s0, s0 + 2),), FLAT[s0 : s0 + 2])
    assert not _writer_threads()
    with pytest.raises(StreamingError):
        pool.submit(LAYOUT.group, LAYOUT.name, (slice(0, 2),), FLAT[:2])


def test_keyboard_interrupt_stops_writers() -> None:
    sink = FailingSink(fail_at=-1, delay=0.1)
    sink.open([LAYOUT])
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt), WriterPool(sink, threads=1, depth=5) as pool:
        for s0 in range(0, 10, 2):
            pool.submit(LAYOUT.group, LAYOUT.name, (slice(s0, s0 + 2),), FLAT[s0 : s0 + 2])
        raise KeyboardInterrupt
    assert time.monotonic() - start < 2
    assert not _writer_threads()
    assert sink.calls < 5  # queued blocks were dropped


@pytest.mark.parametrize("trim", [True, False])
def test_freed_memory_is_returned_as_blocks_are_written(
    trim: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each block is 2 x 4 float32 = 32 bytes; with a 64-byte period, 10 blocks
    # return freed memory 5 times while writing, and once more at the end.
    calls: list[str] = []

    def release() -> None:
        calls.append(threading.current_thread().name)
        memory.release_free_memory()

    monkeypatch.setattr(pipeline, "release_free_memory", release)
    sink = MemorySink()
    sink.open([LAYOUT])
    with WriterPool(sink, threads=2, depth=2, trim_memory=trim, trim_every_bytes=64) as pool:
        for s0 in range(0, 20, 2):
            pool.submit(LAYOUT.group, LAYOUT.name, (slice(s0, s0 + 2),), FLAT[s0 : s0 + 2])
    if trim:
        assert len(calls) == 6
        assert sum(name.startswith("dopax-writer-") for name in calls) == 5
    else:
        assert calls == []
    np.testing.assert_array_equal(
        sink.close()["posterior_predictive/y"].values, FLAT.reshape(2, 10, 4)
    )


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        WriterPool(MemorySink(), threads=0, depth=1)
    with pytest.raises(ValueError):
        WriterPool(MemorySink(), threads=1, depth=0)
    pool = WriterPool(MemorySink(), threads=1, depth=1)
    with pytest.raises(StreamingError):
        pool.submit(LAYOUT.group, LAYOUT.name, (slice(0, 2),), FLAT[:2])
