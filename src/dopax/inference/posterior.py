"""Posterior draws as the engine consumes them: flat over chains, chain-major.

Draws either live in memory (NumPy arrays) or stay in a trace's Zarr store
(:class:`ChainMajorDraws`), which the engine reads one block of draws at a
time: a model fitted to a :class:`dopax.ZarrTrace` predicts without holding
its posterior in memory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from dopax.sampling.row_latent import COUPLED, DELTA, NORMAL, RowGuide
from dopax.sampling.window import ReadWindow

__all__ = ["READ_PIECE_BYTES", "ChainMajorDraws", "Posterior", "stored_bytes_per_draw"]

#: Most bytes of stored draws read in one Zarr call (:meth:`ChainMajorDraws._fill`).
READ_PIECE_BYTES = 4 << 20


class ChainMajorDraws:
    """A stored ``(chain, draw, ...)`` array seen as flat draws, chain-major.

    ``draws[a:b]`` reads only draws ``a`` to ``b`` (across chain boundaries)
    from the store; ``numpy.asarray(draws)`` reads everything.

    Each read first checks that the array is still in its store: Zarr reads
    a missing chunk as its fill value, so draws of a deleted trace would
    otherwise come back as NaN without an error.

    Args:
        array: An array with ``chain`` and ``draw`` leading axes whose
            ``array[c, a:b]`` returns the values (a ``zarr.Array``).
        where: What holds the array, for the error when it is gone (e.g.
            the trace's repr).
    """

    def __init__(self, array: Any, where: str | None = None) -> None:
        self.array = array
        self.where = where
        self.num_chains = int(array.shape[0])
        self.per_chain = int(array.shape[1])
        self.shape: tuple[int, ...] = (
            self.num_chains * self.per_chain,
            *(int(n) for n in array.shape[2:]),
        )
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)
        self._window = ReadWindow()

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ChainMajorDraws(shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, key: Any) -> np.ndarray:
        rest: tuple[Any, ...] = ()
        if isinstance(key, tuple):
            key, rest = (key[0], key[1:]) if key else (slice(None), ())
        scalar = False
        if isinstance(key, slice) and key.step in (None, 1):
            start, stop, _ = key.indices(self.shape[0])
            out = self._read(start, max(start, stop))
        else:  # an index or an index array: positions, read chain by chain
            flat = np.arange(self.shape[0])[key]
            scalar = np.ndim(flat) == 0
            out = self._take(np.atleast_1d(flat))
        if rest:
            out = out[(slice(None), *rest)]
        return out[0] if scalar else out

    def _check_present(self) -> None:
        """Raise ``FileNotFoundError`` naming the store when the array's metadata is gone."""
        store_path = getattr(self.array, "store_path", None)
        if store_path is None:  # not a Zarr array: nothing to check
            return
        key = f"{store_path.path}/zarr.json" if store_path.path else "zarr.json"
        if not sync(store_path.store.exists(key)):
            where = self.where or str(store_path.store)
            raise FileNotFoundError(
                f"Posterior draws of {store_path.path!r} are no longer in {where}: the "
                "model reads its draws from the trace it was fitted to, which was "
                "deleted or moved. Keep the trace while the model is used, or refit."
            )

    def _read(self, start: int, stop: int) -> np.ndarray:
        self._check_present()
        return self._read_present(start, stop)

    def _read_present(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((max(0, stop - start), *self.shape[1:]), self.dtype)
        self._fill(out, start, stop, ())
        return out

    def _fill(self, out: np.ndarray, start: int, stop: int, tail: tuple[Any, ...]) -> None:
        """Read flat draws ``start:stop`` (at ``tail`` on the draw's own axes) into ``out``.

        Zarr holds every chunk of one read at once, as stored and decoded, so
        the draws are read in chunk-aligned pieces of about
        :data:`READ_PIECE_BYTES`, each decoded straight into its place in
        ``out``: a block of draws costs the block plus two pieces, whatever
        the block's size.
        """
        per = self.per_chain
        if not per or stop <= start:
            return
        step = self._row_chunk(0)
        per_draw = out[:1].nbytes or 1
        piece = step * max(1, READ_PIECE_BYTES // (step * per_draw))
        wrap = (
            default_buffer_prototype().nd_buffer.from_numpy_array
            if isinstance(self.array, zarr.Array)
            else None
        )
        for chain in range(start // per, -(-stop // per)):
            a, b = max(start, chain * per), min(stop, (chain + 1) * per)
            while a < b:
                first = a - chain * per
                c = min(b, chain * per + (first // piece + 1) * piece)
                where = (chain, slice(first, c - chain * per), *tail)
                if wrap is not None:  # decoded into place
                    self.array.get_basic_selection(where, out=wrap(out[a - start : c - start]))
                else:
                    out[a - start : c - start] = self.array[where]
                a = c

    def _take(self, flat: np.ndarray) -> np.ndarray:
        """Read the flat draws ``flat`` (any order, repeats allowed), by runs of stored chunks.

        Only chunks holding a chosen draw are read, each once; neighbouring
        ones of a chain are read together up to :data:`READ_PIECE_BYTES`.
        Each read spans the chosen draws of its chunks, so the selection
        costs its output and at most a piece (or one chunk) besides,
        however far apart the draws lie.
        """
        self._check_present()  # once for the whole selection
        out = np.empty((len(flat), *self.shape[1:]), self.dtype)
        if not len(flat):
            return out
        per, step = self.per_chain, self._row_chunk(0)
        per_chain_chunks = -(-per // step)
        chunk_ids = (flat // per) * per_chain_chunks + (flat % per) // step
        order = np.argsort(chunk_ids, kind="stable")
        ids, firsts = np.unique(chunk_ids[order], return_index=True)
        ends = [*firsts[1:], len(order)]
        most = max(1, READ_PIECE_BYTES // max(1, step * (out[:1].nbytes or 1)))
        start = 0
        for j in range(1, len(ids) + 1):
            if (
                j < len(ids)
                and ids[j] == ids[j - 1] + 1
                and ids[j] // per_chain_chunks == ids[start] // per_chain_chunks
                and j - start < most
            ):
                continue
            chosen = order[firsts[start] : ends[j - 1]]
            picked = flat[chosen]
            lo, hi = int(picked.min()), int(picked.max()) + 1
            out[chosen] = self._read_present(lo, hi)[picked - lo]
            start = j
        return out

    def block(self, start: int, stop: int, axis: int, rows: Any, window_bytes: int) -> np.ndarray:
        """Read draws ``start:stop`` at ``rows`` along ``axis`` only (a per-row site's block).

        Only the chunks holding those draws and rows are read: a block of a
        per-row site never loads the site's whole posterior. The rows read
        are whole chunks of the store along ``axis``; when they fit
        ``window_bytes`` they are kept for the next block, so each chunk is
        decompressed once even when blocks have fewer rows than the chunks.

        Args:
            start: First flat draw.
            stop: One past the last flat draw.
            axis: The axis of the flat ``(draws, *shape)`` layout that indexes rows.
            rows: A slice or an integer index array.
            window_bytes: Largest span of rows kept for the next block (the
                call's ``ExecutionConfig.input_window_bytes``).
        """
        if axis < 1 or axis >= len(self.shape):
            raise ValueError(f"`axis` must be one of the site's own axes; got {axis}.")
        n = self.shape[axis]
        take = None
        if isinstance(rows, slice):
            r0, r1, _ = rows.indices(n)
            r1 = max(r0, r1)
        else:
            index = np.asarray(rows, dtype=np.int64)
            r0 = int(index.min()) if index.size else 0
            r1 = int(index.max()) + 1 if index.size else 0
            take = index - r0

        def load() -> tuple[int, int, np.ndarray, bool]:
            step = self._row_chunk(axis)
            lo, hi = (r0 // step) * step, min(n, -(-r1 // step) * step)
            span = self._read_span(start, stop, axis, lo, hi)
            return lo, hi, span, span.nbytes <= window_bytes

        out = self._window.read((start, stop, axis), r0, r1, load, axis)
        return out if take is None else np.take(out, take, axis=axis)

    def _row_chunk(self, axis: int) -> int:
        """Chunk length of the store along ``axis`` of the flat layout (0: draws)."""
        chunks = getattr(self.array, "chunks", None)
        try:
            return max(1, int(chunks[axis + 1]))  # type: ignore[index]
        except (TypeError, IndexError, ValueError):
            return max(1, self.shape[axis])

    def _read_span(self, start: int, stop: int, axis: int, lo: int, hi: int) -> np.ndarray:
        """Read draws ``start:stop`` and rows ``lo:hi`` along ``axis`` into one array."""
        self._check_present()
        shape = list(self.shape)
        shape[0], shape[axis] = max(0, stop - start), max(0, hi - lo)
        out = np.empty(shape, self.dtype)
        self._fill(out, start, stop, (*(slice(None),) * (axis - 1), slice(lo, hi)))
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self._read(0, self.shape[0])
        return out if dtype is None else out.astype(dtype, copy=False)


def stored_bytes_per_draw(draws: Mapping[str, Any]) -> int:
    """Bytes of one draw of the stored draws among ``draws`` (a block reads them in)."""
    return sum(
        int(np.prod(v.shape[1:], dtype=np.int64)) * v.dtype.itemsize
        for v in draws.values()
        if isinstance(v, ChainMajorDraws)
    )


@dataclasses.dataclass(frozen=True)
class Posterior:
    """Posterior draws, flat over chains (chain-major), and the point values they go with.

    Attributes:
        draws: Site name to array with a leading flat draw axis: a NumPy
            array, or a :class:`ChainMajorDraws` read block by block.
        num_chains: Number of chains the draws hold.
        params: Point values of the fit that drew them (an SVI fit's
            ``params``: the guide's and the kernel's ``numpyro.param``
            sites), by name; every draw uses the kernel's among them, as
            NumPyro's ``Predictive(..., params=...)`` does. Empty for MCMC,
            whose ``numpyro.param`` sites keep their initial values.
        row_guides: Per-row latent sites of the fit's guide, by site name.
            Sites of a guide that factorises over rows (``AutoNormal``,
            ``AutoDelta``) have no stored draws: calls draw them block by
            block from ``params``, addressed by ``row_words``. Sites of a guide that
            couples rows are marked :data:`~dopax.sampling.row_latent.COUPLED`
            (their draws are in ``draws``).
        n_draws: Number of draws when ``draws`` is empty (every latent site
            is drawn per call).
        row_words: The row key (two ``uint32`` words) fixed at the fit that
            addresses the per-row sites drawn from the guide: draw ``d`` of
            row ``r`` is the same in every call, as if it were stored.
    """

    draws: dict[str, Any]
    num_chains: int = 1
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    row_guides: Mapping[str, RowGuide] = dataclasses.field(default_factory=dict)
    n_draws: int = 0
    row_words: np.ndarray | None = None

    def drawn_per_call(self) -> dict[str, RowGuide]:
        """Return the per-row sites drawn from the guide's parameters by each call."""
        return {k: g for k, g in self.row_guides.items() if g.kind in (NORMAL, DELTA)}

    def coupled_by(self) -> dict[str, str]:
        """Return the per-row sites whose guide couples rows, with the guide's name."""
        return {k: g.guide for k, g in self.row_guides.items() if g.kind == COUPLED}

    @property
    def num_draws(self) -> int:
        """Total number of draws (all chains)."""
        if not self.draws:
            return int(self.n_draws)
        return int(next(iter(self.draws.values())).shape[0])

    def in_memory(self) -> dict[str, np.ndarray]:
        """Return the draws as NumPy arrays (stored draws are read whole)."""
        return {k: np.asarray(v) for k, v in self.draws.items()}

    def by_chain(self) -> dict[str, Any]:
        """Return the draws shaped ``(chain, draw, ...)``: the one place they are reshaped.

        Stored draws are returned as their stored ``(chain, draw, ...)`` arrays,
        unread.
        """
        return {
            k: v.array
            if isinstance(v, ChainMajorDraws)
            else np.asarray(v).reshape(self.num_chains, -1, *np.shape(v)[1:])
            for k, v in self.draws.items()
        }
