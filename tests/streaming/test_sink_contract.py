"""One contract suite run against every sink."""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
import xarray as xr
import zarr

from dopax.config import ExecutionConfig
from dopax.exceptions import StreamingError
from dopax.output.schema import SiteLayout
from dopax.streaming.sinks import MemorySink, Sink, ZarrSink

NUM_CHAINS, NUM_DRAWS = 4, 6
S = NUM_CHAINS * NUM_DRAWS

LAYOUTS = [
    # shape (rows, 3), chunked over draws and rows
    SiteLayout("posterior_predictive", "y", NUM_CHAINS, NUM_DRAWS, (5, 3), "float32", (1, 3, 2, 3)),
    # chunks spanning two chains: blocks inside one chain write partial chunks
    SiteLayout("posterior_predictive", "mu", NUM_CHAINS, NUM_DRAWS, (5,), "float64", (2, 4, 5)),
    SiteLayout("posterior_predictive", "count", NUM_CHAINS, NUM_DRAWS, (5,), "int64", (1, 6, 2)),
    # no row axis
    SiteLayout("posterior", "sigma", NUM_CHAINS, NUM_DRAWS, (), "float32", (1, 3)),
    SiteLayout("log_likelihood", "flag", NUM_CHAINS, NUM_DRAWS, (5,), "bool", (1, 6, 5)),
    SiteLayout("log_likelihood", "zero", NUM_CHAINS, NUM_DRAWS, (5,), "int32", (1, 6, 5)),
]
ATTRS = {"model": "toy", "seed": 3}
FLAT_CUTS = [0, 5, 9, 15, 19, 24]  # crosses the chain boundaries at 6, 12 and 18
ROW_CUTS = {"y": [0, 2, 5]}


def _expected() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray] = {}
    for layout in LAYOUTS:
        shape = layout.full_shape
        if layout.dtype == "bool":
            value = rng.random(shape) < 0.5
        elif layout.name == "zero":
            value = np.zeros(shape, dtype=layout.dtype)
        elif np.dtype(layout.dtype).kind == "i":
            value = rng.integers(-1000, 1000, shape).astype(layout.dtype)
        else:
            value = rng.normal(size=shape).astype(layout.dtype)
            value.flat[0] = np.nan
        out[layout.name] = value
    return out


EXPECTED = _expected()
STATIC = {"posterior": {"beta": np.random.default_rng(1).normal(size=(NUM_CHAINS, NUM_DRAWS, 2))}}


def _blocks() -> list[tuple[str, str, tuple[slice, ...], np.ndarray]]:
    blocks = []
    for layout in LAYOUTS:
        flat = EXPECTED[layout.name].reshape(S, *layout.shape)
        row_cuts = ROW_CUTS.get(layout.name)
        for s0, s1 in itertools.pairwise(FLAT_CUTS):
            if row_cuts is None:
                blocks.append((layout.group, layout.name, (slice(s0, s1),), flat[s0:s1]))
                continue
            for r0, r1 in itertools.pairwise(row_cuts):
                index = (slice(s0, s1), slice(r0, r1))
                blocks.append((layout.group, layout.name, index, flat[index]))
    order = np.random.default_rng(2).permutation(len(blocks))
    return [blocks[i] for i in order]


@pytest.fixture(params=["memory", "zarr-local", "zarr-memorystore"])
def sink_case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Sink, Path | None]]:
    if request.param == "memory":
        yield MemorySink(), None
    elif request.param == "zarr-local":
        path = tmp_path / "result"
        yield ZarrSink(path), path
    else:
        yield ZarrSink(store=zarr.storage.MemoryStore()), None


def _write_all(sink: Sink) -> xr.DataTree:
    sink.open(LAYOUTS, static=STATIC, attrs=ATTRS)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda b: sink.write(*b), _blocks()))
    return sink.close()


def _check_tree(tree: xr.DataTree) -> None:
    assert set(tree.children) == {"posterior", "posterior_predictive", "log_likelihood"}
    for layout in LAYOUTS:
        var = tree[layout.group][layout.name]
        assert var.dims == layout.dims
        assert var.dtype == np.dtype(layout.dtype)
        np.testing.assert_array_equal(var.values, EXPECTED[layout.name], strict=True)
        for dim, size in zip(layout.dims, layout.full_shape, strict=True):
            coord = tree[layout.group].coords[dim]
            np.testing.assert_array_equal(coord.values, np.arange(size))
            assert coord.dtype.kind == "i"
    beta = tree["posterior"]["beta"]
    assert beta.dims == ("chain", "draw", "beta_dim_0")
    np.testing.assert_array_equal(beta.values, STATIC["posterior"]["beta"], strict=True)


def test_round_trip(sink_case: tuple[Sink, Path | None]) -> None:
    sink, path = sink_case
    assert isinstance(sink, Sink)
    tree = _write_all(sink)
    _check_tree(tree)
    expected_attrs = dict(ATTRS)
    if path is not None:
        expected_attrs["artifact_path"] = str(path.resolve())
    assert dict(tree.attrs) == expected_attrs
    lazy = tree["posterior_predictive"]["y"].chunks is not None
    assert lazy is (not isinstance(sink, MemorySink))
    if path is not None:
        with xr.open_datatree(path, engine="zarr") as reopened:
            _check_tree(reopened)
            assert reopened.attrs["model"] == "toy"


def test_arviz_reads_result(sink_case: tuple[Sink, Path | None]) -> None:
    az = pytest.importorskip("arviz")
    sink, _ = sink_case
    idata = az.from_datatree(_write_all(sink))
    assert set(idata.groups()) >= {"posterior", "posterior_predictive", "log_likelihood"}
    np.testing.assert_array_equal(idata.posterior["sigma"].values, EXPECTED["sigma"])


def test_write_validation(sink_case: tuple[Sink, Path | None]) -> None:
    sink, _ = sink_case
    with pytest.raises(StreamingError):
        sink.write("posterior", "sigma", (slice(0, 2),), np.zeros(2, "float32"))
    sink.open(LAYOUTS[:1])
    with pytest.raises(ValueError, match="shape"):
        sink.write("posterior_predictive", "y", (slice(0, 2),), np.zeros((3, 5, 3), "float32"))
    with pytest.raises(KeyError, match="not declared"):
        sink.write("posterior", "nope", (slice(0, 2),), np.zeros(2, "float32"))
    with pytest.raises(ValueError, match="step 1"):
        sink.write("posterior_predictive", "y", (slice(0, 4, 2),), np.zeros((2, 5, 3), "float32"))
    with pytest.raises(StreamingError):
        sink.open(LAYOUTS[:1])
    sink.abort()
    with pytest.raises(StreamingError):
        sink.write("posterior_predictive", "y", (slice(0, 1),), np.zeros((1, 5, 3), "float32"))


def test_open_validation(sink_case: tuple[Sink, Path | None]) -> None:
    sink, _ = sink_case
    bad_group = SiteLayout("nowhere", "x", 1, 1, (), "float32", (1, 1))
    with pytest.raises(ValueError, match="Unknown group"):
        sink.open([bad_group])
    clash = SiteLayout("posterior", "draw", 1, 2, (), "float32", (1, 1))
    with pytest.raises(ValueError, match="clash"):
        sink.open([clash])


def test_zarr_sink_refuses_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        ZarrSink(tmp_path)
    assert (tmp_path / "file.txt").read_text() == "keep me"
    with pytest.raises(TypeError):
        ZarrSink()


@pytest.mark.parametrize("compressor", [None, "zstd", "lz4", "blosc-lz4", "bitshuffle-lz4"])
def test_zarr_sink_codecs(compressor: str | None) -> None:
    store = zarr.storage.MemoryStore()
    sink = ZarrSink(store=store, config=ExecutionConfig(compressor=compressor))
    layout = LAYOUTS[0]
    sink.open([layout])
    flat = EXPECTED["y"].reshape(S, 5, 3)
    sink.write(layout.group, layout.name, (slice(0, S),), flat)
    tree = sink.close()
    np.testing.assert_array_equal(tree["posterior_predictive/y"].values, EXPECTED["y"])
    codecs = zarr.open_array(store, path="posterior_predictive/y", mode="r").compressors
    names = [type(codec).__name__ for codec in codecs]
    expected = {None: [], "zstd": ["ZstdCodec"]}.get(compressor, ["BloscCodec"])
    assert names == [*expected, "Crc32cCodec"]  # every chunk ends with its checksum


@pytest.mark.parametrize("direct_io", [True, False])
def test_auto_codec_stores_floats_raw_and_compresses_the_rest(
    tmp_path: Path, direct_io: bool
) -> None:
    config = ExecutionConfig(compressor="auto", direct_io=direct_io)
    sink = ZarrSink(tmp_path / "out", config=config)
    sink.open(LAYOUTS)
    for layout in LAYOUTS:
        flat = EXPECTED[layout.name].reshape(S, *layout.shape)
        sink.write(layout.group, layout.name, (slice(0, S),), flat)
    tree = sink.close()
    for layout in LAYOUTS:
        np.testing.assert_array_equal(
            tree[f"{layout.group}/{layout.name}"].values, EXPECTED[layout.name]
        )
        codecs = zarr.open_array(tmp_path / "out", path=f"{layout.group}/{layout.name}").compressors
        names = [type(codec).__name__ for codec in codecs]
        assert names[-1:] == ["Crc32cCodec"], layout.name
        if np.dtype(layout.dtype).kind == "f":
            assert codecs[:-1] == (), layout.name
        else:
            assert names[:-1] == ["BloscCodec"], layout.name
            blosc = codecs[0]
            assert (blosc.cname.value, blosc.shuffle.value) == ("lz4", "bitshuffle")
            assert blosc.typesize == np.dtype(layout.dtype).itemsize
    # the on-disk chunk of a float variable is its raw little-endian bytes, then their CRC-32C
    y = tmp_path / "out" / "posterior_predictive" / "y" / "c" / "0" / "0" / "0" / "0"
    raw = np.ascontiguousarray(EXPECTED["y"][0:1, 0:3, 0:2, 0:3]).tobytes()
    assert y.read_bytes() == raw + struct.pack("<I", google_crc32c.value(raw))


@pytest.mark.parametrize("compressor", ["zstd", "lz4", "bitshuffle-lz4", None])
@pytest.mark.parametrize("dtype", ["int32", "int64", "bool", "float32"])
def test_direct_chunk_bytes_equal_what_zarr_stores(
    tmp_path: Path, compressor: str | None, dtype: str
) -> None:
    """Chunks encoded by the writer threads are byte for byte Zarr's own encoding."""
    layout = SiteLayout("posterior_predictive", "v", 1, 4, (6,), dtype, (1, 4, 6))
    rng = np.random.default_rng(7)
    flat = (rng.poisson(3, (4, 6)) * (1 if dtype != "float32" else 0.25)).astype(dtype)
    config = ExecutionConfig(compressor=compressor)
    stored = {}
    for kind in ("folder", "memory"):
        # a folder takes the direct path; a store given to the sink goes through Zarr
        if kind == "folder":
            sink = ZarrSink(tmp_path / "out", config=config)
        else:
            store = zarr.storage.MemoryStore()
            sink = ZarrSink(store=store, config=config)
        sink.open([layout])
        sink.write(layout.group, layout.name, (slice(0, 4),), flat)
        tree = sink.close()
        np.testing.assert_array_equal(tree["posterior_predictive/v"].values[0], flat)
        if kind == "folder":
            chunk = tmp_path / "out" / "posterior_predictive" / "v" / "c" / "0" / "0" / "0"
            stored[kind] = chunk.read_bytes()
        else:
            prototype = zarr.core.buffer.default_buffer_prototype()
            buffer = zarr.core.sync.sync(store.get("posterior_predictive/v/c/0/0/0", prototype))
            assert buffer is not None
            stored[kind] = buffer.to_bytes()
    assert stored["folder"] == stored["memory"]


class FailingStaticSink(ZarrSink):
    """A Zarr folder whose disk fills while the posterior is written (OS error injected)."""

    def _write_whole_chunk(self, layout, target, region, piece, chunks):  # type: ignore[no-untyped-def]
        if layout.group == "posterior":
            raise OSError(28, "No space left on device")
        return super()._write_whole_chunk(layout, target, region, piece, chunks)


def test_static_write_failure_surfaces_at_close_and_removes_the_folder(tmp_path: Path) -> None:
    sink = FailingStaticSink(tmp_path / "out")
    sink.open(LAYOUTS[:1], static=STATIC, attrs=ATTRS)
    layout = LAYOUTS[0]
    sink.write(layout.group, layout.name, (slice(0, S),), EXPECTED["y"].reshape(S, 5, 3))
    with pytest.raises(OSError, match="No space left"):
        sink.close()
    assert not (tmp_path / "out").exists()
    assert not [t for t in threading.enumerate() if t.name == "dopax-static-writer"]


def test_large_static_variable_is_chunked_by_draws(tmp_path: Path) -> None:
    big = np.random.default_rng(5).normal(size=(1, 100, 400, 500)).astype("float32")  # 80 MB
    sink = ZarrSink(tmp_path / "out")
    sink.open(LAYOUTS[:1], static={"posterior": {"w": big}})
    layout = LAYOUTS[0]
    sink.write(layout.group, layout.name, (slice(0, S),), EXPECTED["y"].reshape(S, 5, 3))
    tree = sink.close()
    stored = zarr.open_array(tmp_path / "out", path="posterior/w")
    assert stored.chunks[0] == 1 and stored.chunks[1] < 100
    np.testing.assert_array_equal(tree["posterior/w"].values, big)


async def _metadata(store: zarr.abc.store.Store) -> dict[str, object]:
    prototype = zarr.core.buffer.default_buffer_prototype()
    docs: dict[str, object] = {}
    async for key in store.list():
        if key.endswith("zarr.json"):
            buffer = await store.get(key, prototype)
            assert buffer is not None
            docs[key] = json.loads(buffer.to_bytes())
    return docs


@pytest.mark.parametrize("compressor", ["auto", "zstd"])
def test_declared_metadata_equals_what_xarray_writes(compressor: str) -> None:
    """The store the sink declares is the one ``to_zarr`` writes for the same tree."""
    import dask.array as da

    from dopax.output.schema import POSITION_ATTRS, site_dims
    from dopax.streaming.sinks import codec_for, compressors_for

    layouts = [
        SiteLayout("posterior_predictive", "y", 2, 5, (7,), "float32", (1, 5, 4)),
        SiteLayout("posterior_predictive", "k", 2, 5, (7, 3), "int32", (1, 2, 7, 3)),
        SiteLayout("posterior_predictive", "flag", 2, 5, (7,), "bool", (1, 5, 7)),
        SiteLayout("log_likelihood", "y", 2, 5, (7,), "float64", (1, 5, 7)),
    ]
    static = {
        "posterior": {
            "beta": np.zeros((2, 5, 3), np.float32),
            "sigma": np.ones((2, 5), np.float32),
            "n": np.ones((2, 5), np.int64),
        }
    }
    attrs = {
        "method": "predict",
        "in_sample": np.int64(1),
        "scale": np.float32(0.5),
        "sites": ("y", "k"),
        "weights": np.arange(3),
        "complete": False,
    }
    config = ExecutionConfig(compressor=compressor)
    store = zarr.storage.MemoryStore()
    sink = ZarrSink(store=store, config=config)
    sink.open(layouts, static=static, attrs=attrs)
    declared = zarr.core.sync.sync(_metadata(store))
    # Every variable as the sink declared it (read back through zarr's public API).
    root = zarr.open_group(store, mode="r")
    final: dict[tuple[str, str], tuple[tuple[int, ...], np.dtype, tuple[int, ...]]] = {}
    for group_name, group_node in root.groups():
        for name, array in group_node.arrays():
            if array.metadata.dimension_names != (name,):
                final[(group_name, name)] = (array.shape, array.dtype, array.chunks)
    sink.abort()

    nodes: dict[str, xr.Dataset] = {"/": xr.Dataset(attrs=attrs)}
    encoding: dict[str, dict[str, dict[str, object]]] = {}
    for group in ("posterior", "log_likelihood", "posterior_predictive"):
        data_vars = {}
        enc: dict[str, dict[str, object]] = {}
        sizes: dict[str, int] = {}
        for (g, name), (shape, stored_dtype, stored_chunks) in sorted(final.items()):
            if g != group:
                continue
            dims = site_dims(name, len(shape) - 2)
            data_vars[name] = (dims, da.empty(shape, dtype=stored_dtype))
            sizes.update(zip(dims, shape, strict=True))
            dtype = np.dtype(stored_dtype)
            enc[name] = {
                "compressors": compressors_for(
                    codec_for(config, dtype), config.compression_level, dtype
                ),
                "_FillValue": None,
                "chunks": stored_chunks,
            }
        coords = xr.Coordinates(
            {
                dim: (dim, da.arange(n, dtype=np.int64), dict(POSITION_ATTRS))
                for dim, n in sizes.items()
            },
            indexes={},
        )
        for dim, n in sizes.items():
            dtype = np.dtype(np.int64)
            enc[dim] = {
                "compressors": compressors_for(
                    codec_for(config, dtype), config.compression_level, dtype
                ),
                "_FillValue": None,
                "chunks": (min(n, config.coord_chunk),),
            }
        nodes[f"/{group}"] = xr.Dataset(data_vars, coords=coords)
        encoding[f"/{group}"] = enc
    reference = zarr.storage.MemoryStore()
    xr.DataTree.from_dict(nodes).to_zarr(
        reference,
        mode="w-",
        encoding=encoding,
        consolidated=False,
        compute=False,
        zarr_format=3,
        write_empty_chunks=True,
    )
    expected = zarr.core.sync.sync(_metadata(reference))
    assert sorted(declared) == sorted(expected)
    for key, doc in expected.items():
        assert declared[key] == doc, key
