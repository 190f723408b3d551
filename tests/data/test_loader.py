from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

import dopax.data
from dopax.data import ArrayDataset, ArrayLoader


def make(n: int = 23, *, to_jax: bool = False) -> ArrayDataset:
    return ArrayDataset(
        to_jax=to_jax, idx=np.arange(n), x=np.arange(3 * n, dtype=np.float32).reshape(n, 3)
    )


def epoch_rows(loader: ArrayLoader) -> list[int]:
    rows: list[int] = []
    for batch, n_pad in loader:
        assert n_pad == 0
        np.testing.assert_array_equal(
            np.asarray(batch["x"]), np.asarray(loader.dataset.arrays["x"])[batch["idx"]]
        )
        rows.extend(int(i) for i in batch["idx"])
    return rows


@pytest.mark.parametrize(
    ("n", "batch_size", "sizes"),
    [(23, 10, [10, 10, 3]), (20, 10, [10, 10]), (5, 32, [5]), (1, 1, [1]), (0, 4, [])],
)
@pytest.mark.parametrize("shuffle", [False, True])
def test_batch_counts_and_sizes(n: int, batch_size: int, sizes: list[int], shuffle: bool) -> None:
    loader = ArrayLoader(make(n), jax.random.key(0), batch_size=batch_size, shuffle=shuffle)
    assert len(loader) == len(sizes)
    assert [len(batch["idx"]) for batch, _ in loader] == sizes


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_row_once_per_epoch(shuffle: bool) -> None:
    loader = ArrayLoader(make(), jax.random.key(1), batch_size=4, shuffle=shuffle)
    for _ in range(3):
        rows = epoch_rows(loader)
        assert sorted(rows) == list(range(23))
        if not shuffle:
            assert rows == list(range(23))
    assert loader.epoch == 3


def test_unshuffled_batches_are_numpy_views() -> None:
    ds = make()
    loader = ArrayLoader(ds, jax.random.key(0), batch_size=10)
    batch, n_pad = next(iter(loader))
    assert n_pad == 0
    assert isinstance(batch["x"], np.ndarray)
    assert np.shares_memory(batch["x"], ds.arrays["x"])


def test_jax_dataset_gives_jax_batches() -> None:
    loader = ArrayLoader(make(to_jax=True), jax.random.key(0), batch_size=10, shuffle=True)
    rows = []
    for batch, n_pad in loader:
        assert n_pad == 0
        assert isinstance(batch["x"], jax.Array)
        rows.extend(np.asarray(batch["idx"]).tolist())
    assert sorted(rows) == list(range(23))


def test_shuffle_follows_fold_in_permutation() -> None:
    key = jax.random.key(7)
    loader = ArrayLoader(make(), key, batch_size=5, shuffle=True)
    for epoch in range(3):
        expected = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), 23))
        assert epoch_rows(loader) == expected.tolist()


def test_shuffle_deterministic_in_key_and_differs_per_epoch() -> None:
    first = ArrayLoader(make(), jax.random.key(3), batch_size=6, shuffle=True)
    second = ArrayLoader(make(), jax.random.key(3), batch_size=6, shuffle=True)
    other = ArrayLoader(make(), jax.random.key(4), batch_size=6, shuffle=True)
    orders = [epoch_rows(first) for _ in range(3)]
    assert orders == [epoch_rows(second) for _ in range(3)]
    assert orders[0] != epoch_rows(other)
    assert orders[0] != orders[1] != orders[2]
    assert orders[0] != list(range(23))
    for order in orders:
        assert sorted(order) == list(range(23))


def test_legacy_key_accepted() -> None:
    key = jax.random.PRNGKey(5)
    loader = ArrayLoader(make(), key, batch_size=8, shuffle=True)
    expected = np.asarray(jax.random.permutation(jax.random.fold_in(key, 0), 23))
    assert epoch_rows(loader) == expected.tolist()


def test_epoch_counts_iter_calls() -> None:
    loader = ArrayLoader(make(), jax.random.key(0), batch_size=10)
    assert loader.epoch == 0
    it = iter(loader)
    assert loader.epoch == 1
    next(it)
    iter(loader)
    assert loader.epoch == 2


def test_properties() -> None:
    ds = make()
    device = jax.devices()[0]
    loader = ArrayLoader(ds, jax.random.key(0), batch_size=4, shuffle=True, device=device)
    assert loader.dataset is ds
    assert loader.batch_size == 4
    assert loader.shuffle is True
    assert loader.device is device
    assert loader.epoch == 0
    assert ArrayLoader(ds, jax.random.key(0)).device is None
    assert ArrayLoader(ds, jax.random.key(0)).batch_size == 32


def test_single_device_places_without_padding() -> None:
    device = jax.devices()[0]
    loader = ArrayLoader(make(), jax.random.key(0), batch_size=10, device=device)
    out = list(loader)
    assert [n_pad for _, n_pad in out] == [0, 0, 0]
    for batch, _ in out:
        assert isinstance(batch["x"], jax.Array)
        assert batch["x"].devices() == {device}
    np.testing.assert_array_equal(np.concatenate([b["idx"] for b, _ in out]), np.arange(23))


def test_single_device_sharding() -> None:
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    loader = ArrayLoader(make(), jax.random.key(0), batch_size=10, shuffle=True, device=sharding)
    out = list(loader)
    assert [n_pad for _, n_pad in out] == [0, 0, 0]
    for batch, _ in out:
        assert isinstance(batch["idx"], jax.Array)
        assert batch["idx"].sharding == sharding


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, False, "3", None, np.float64(4.0)])
def test_invalid_batch_size(batch_size: object) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        ArrayLoader(make(), jax.random.key(0), batch_size=batch_size)  # type: ignore[arg-type]


def test_numpy_integer_batch_size_accepted() -> None:
    loader = ArrayLoader(make(), jax.random.key(0), batch_size=np.int64(10))  # type: ignore[arg-type]
    assert loader.batch_size == 10
    assert type(loader.batch_size) is int
    assert len(loader) == 3


def test_dataset_type_checked() -> None:
    with pytest.raises(TypeError, match="ArrayDataset"):
        ArrayLoader({"x": np.zeros(3)}, jax.random.key(0))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "key",
    [0, np.zeros(2, dtype=np.int32), jax.numpy.zeros(3, dtype=jax.numpy.uint32), "key"],
)
def test_rng_key_checked(key: object) -> None:
    with pytest.raises(TypeError, match="rng_key"):
        ArrayLoader(make(), key)  # type: ignore[arg-type]


def test_rng_key_batch_of_keys_rejected() -> None:
    with pytest.raises(TypeError, match="rng_key"):
        ArrayLoader(make(), jax.random.split(jax.random.key(0), 2))


def test_device_type_checked() -> None:
    with pytest.raises(TypeError, match="device"):
        ArrayLoader(make(), jax.random.key(0), device="cpu")  # type: ignore[arg-type]


SHARDED = textwrap.dedent(
    """
    import json

    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from dopax.data import ArrayDataset, ArrayLoader

    n = 23
    ds = ArrayDataset(idx=np.arange(n), x=np.arange(3 * n, dtype=np.float32).reshape(n, 3))
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    result = {"devices": jax.device_count(), "epochs": []}
    for shuffle, batch_size in [(False, 10), (True, 10), (False, 8), (True, 3)]:
        loader = ArrayLoader(
            ds, jax.random.key(0), batch_size=batch_size, shuffle=shuffle, device=sharding
        )
        batches = []
        for batch, n_pad in loader:
            batches.append(
                {
                    "n_pad": n_pad,
                    "idx": np.asarray(batch["idx"]).tolist(),
                    "x": np.asarray(batch["x"]).tolist(),
                    "shape": list(batch["x"].shape),
                    "sharded": batch["x"].sharding == sharding
                    and batch["idx"].sharding == sharding,
                    "shard_rows": sorted(s.data.shape[0] for s in batch["x"].addressable_shards),
                }
            )
        result["epochs"].append(
            {"shuffle": shuffle, "batch_size": batch_size, "len": len(loader), "batches": batches}
        )
    print(json.dumps(result))
    """
)


def run_with_cpu_devices(code: str, count: int) -> dict:
    src = str(Path(dopax.data.__file__).resolve().parents[2])
    env = dict(os.environ)
    env["JAX_NUM_CPU_DEVICES"] = str(count)
    env["JAX_PLATFORMS"] = "cpu"
    flags = env.get("XLA_FLAGS", "").split()
    env["XLA_FLAGS"] = " ".join(f for f in flags if "device_count" not in f)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [src, env.get("PYTHONPATH", "")] if p)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_padding_with_sharding_over_four_cpu_devices() -> None:
    result = run_with_cpu_devices(SHARDED, 4)
    assert result["devices"] == 4
    expected = {
        (False, 10): ([10, 10, 3], [12, 12, 4]),
        (True, 10): ([10, 10, 3], [12, 12, 4]),
        (False, 8): ([8, 8, 7], [8, 8, 8]),
        (True, 3): ([3] * 7 + [2], [4] * 8),
    }
    for epoch in result["epochs"]:
        real, padded = expected[(epoch["shuffle"], epoch["batch_size"])]
        batches = epoch["batches"]
        assert epoch["len"] == len(real)
        assert [b["shape"][0] for b in batches] == padded
        assert [b["n_pad"] for b in batches] == [p - r for p, r in zip(padded, real, strict=True)]
        rows: list[int] = []
        for b, size in zip(batches, real, strict=True):
            assert b["sharded"]
            assert b["shard_rows"] == [b["shape"][0] // 4] * 4
            idx, x = b["idx"], np.asarray(b["x"])
            rows.extend(idx[:size])
            # Padding repeats the batch's last real row.
            assert idx[size:] == [idx[size - 1]] * b["n_pad"]
            np.testing.assert_array_equal(x[size:], np.repeat(x[size - 1 : size], b["n_pad"], 0))
            np.testing.assert_array_equal(
                x[:size], np.arange(69, dtype=np.float32).reshape(23, 3)[idx[:size]]
            )
        assert sorted(rows) == list(range(23))
        if not epoch["shuffle"]:
            assert rows == list(range(23))
