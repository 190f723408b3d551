"""The sink: where streamed draws go, and the bookkeeping every sink shares.

A sink receives blocks of draws addressed in the *flat* layout
``(S, *shape)``, where ``S = num_chains * num_draws`` runs chain-major (flat
draw ``s`` is chain ``s // num_draws``, draw ``s % num_draws``), and stores
them in the result layout ``(chain, draw, *shape)`` of
:mod:`dopax.output.schema`. Every sink follows the same life cycle:
:meth:`Sink.open`, any number of (thread-safe) :meth:`Sink.write` calls,
optionally :meth:`Sink.add_attrs`, then either :meth:`Sink.close`, which returns the result as an
:class:`xarray.DataTree`, or :meth:`Sink.abort` on failure; a call that fails
after :meth:`Sink.close` calls :meth:`Sink.discard`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from dopax.exceptions import StreamingError
from dopax.output.build import tree_from_nodes
from dopax.output.schema import GROUPS, SiteLayout, position_coords, site_dims
from dopax.streaming.sinks.layout import is_stored, resolve_index

__all__ = ["Sink", "StaticData"]

#: Small variables written whole at open: ``{group: {name: array}}``, each array
#: shaped ``(chain, draw, *shape)``.
StaticData = Mapping[str, Mapping[str, np.ndarray]]


class Sink:
    """Destination of streamed draws, with the bookkeeping every sink shares.

    ``write`` may be called from several threads at once; ``open``, ``close``
    and ``abort`` are called from one thread, with no ``write`` in flight. A
    sink keeps its declared variables, its state and the mapping of flat
    indices; subclasses store the values (:meth:`_start`, :meth:`write`,
    :meth:`close`, :meth:`abort`, :meth:`discard`).
    """

    #: Whether stored (Zarr) static arrays stay unread until written piece by
    #: piece (a sink that copies them chunk by chunk); otherwise they are read.
    keeps_stored = False

    def __init__(self) -> None:
        self._layouts: dict[tuple[str, str], SiteLayout] = {}
        self._static: dict[str, dict[str, Any]] = {}
        self._attrs: dict[str, Any] = {}
        self._late_attrs: dict[str, Any] = {}
        self._state = "new"

    def open(
        self,
        layouts: Sequence[SiteLayout],
        *,
        static: StaticData | None = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        """Declare the streamed variables and write the static groups and root attributes.

        Args:
            layouts: One layout per streamed variable.
            static: Small variables written whole, ``{group: {name: array}}``;
                each array already has chain and draw axes.
            attrs: Root attributes of the result.

        Raises:
            FileExistsError: If a Zarr sink's folder or store is no longer empty.
        """
        self._declare(layouts, static, attrs)
        self._start()

    def _start(self) -> None:
        """Make room for the declared variables and write the static ones (then ``open``)."""
        raise NotImplementedError

    def write(self, group: str, name: str, index: tuple[slice, ...], block: np.ndarray) -> None:
        """Store one block of draws.

        Args:
            group: The variable's group.
            name: The variable's name.
            index: Slices into the flat layout ``(S, *shape)``; trailing
                dimensions left out are taken whole.
            block: The values, shaped like ``index`` selects.
        """
        raise NotImplementedError

    def close(self) -> xr.DataTree:
        """Finalise the result and return it."""
        raise NotImplementedError

    def abort(self) -> None:
        """Discard the result so that nothing reads as complete."""
        raise NotImplementedError

    def discard(self) -> None:
        """Remove a finished result whose call failed afterwards (a no-op in memory)."""
        raise NotImplementedError

    def add_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Add root attributes known only once every block is written (before ``close``).

        Args:
            attrs: JSON-serialisable attributes.
        """
        self._check_open()
        self._attrs.update(attrs)
        self._late_attrs.update(attrs)

    def _declare(
        self,
        layouts: Sequence[SiteLayout],
        static: StaticData | None,
        attrs: Mapping[str, Any] | None,
    ) -> None:
        if self._state != "new":
            raise StreamingError(f"{type(self).__name__} can be opened once; it is {self._state}.")
        declared: dict[tuple[str, str], SiteLayout] = {}
        for layout in layouts:
            self._check_group(layout.group)
            key = (layout.group, layout.name)
            if key in declared:
                raise ValueError(f"Variable {layout.group}/{layout.name} is declared twice.")
            if layout.num_chains < 1 or layout.num_draws < 1:
                raise ValueError(f"{layout.group}/{layout.name}: need at least one chain and draw.")
            if len(layout.chunks) != len(layout.full_shape) or min(layout.chunks, default=1) < 1:
                raise ValueError(
                    f"{layout.group}/{layout.name}: `chunks` {layout.chunks} must give a positive "
                    f"size for each of the {len(layout.full_shape)} dimensions."
                )
            np.dtype(layout.dtype)
            declared[key] = layout
        static_arrays: dict[str, dict[str, Any]] = {}
        for group, variables in (static or {}).items():
            self._check_group(group)
            for name, value in variables.items():
                array = value if self.keeps_stored and is_stored(value) else np.asarray(value)
                if array.ndim < 2:
                    raise ValueError(
                        f"Static variable {group}/{name} must have chain and draw axes; "
                        f"got shape {array.shape}."
                    )
                if (group, name) in declared:
                    raise ValueError(f"Variable {group}/{name} is both streamed and static.")
                static_arrays.setdefault(group, {})[name] = array
        self._layouts = declared
        self._static = static_arrays
        self._attrs = dict(attrs or {})
        for group in self._groups():
            self._dims_of(group)

    @staticmethod
    def _check_group(group: str) -> None:
        if group not in GROUPS:
            raise ValueError(f"Unknown group {group!r}; expected one of {GROUPS}.")

    def _groups(self) -> list[str]:
        present = {group for group, _ in self._layouts} | set(self._static)
        return [group for group in GROUPS if group in present]

    def _dims_of(self, group: str) -> dict[str, int]:
        """Return every dimension of ``group`` with its length, checking they agree."""
        dims: dict[str, int] = {}
        names: list[str] = []
        shapes: list[tuple[tuple[str, ...], tuple[int, ...]]] = []
        for (g, name), layout in self._layouts.items():
            if g == group:
                names.append(name)
                shapes.append((layout.dims, layout.full_shape))
        for name, array in self._static.get(group, {}).items():
            names.append(name)
            shapes.append((site_dims(name, array.ndim - 2), array.shape))
        for var_dims, shape in shapes:
            for dim, size in zip(var_dims, shape, strict=True):
                if dims.setdefault(dim, size) != size:
                    raise ValueError(
                        f"Dimension {dim!r} of group {group!r} has length {size} in one "
                        f"variable and {dims[dim]} in another."
                    )
        clashes = sorted(set(names) & set(dims))
        if clashes:
            raise ValueError(f"Variable names {clashes} of group {group!r} clash with dimensions.")
        return dims

    def _tree(
        self,
        make_data: Callable[[SiteLayout], Any],
        root_attrs: Mapping[str, Any],
    ) -> xr.DataTree:
        """Build the result tree in memory, streamed variables given by ``make_data``."""
        nodes: dict[str, xr.Dataset] = {}
        for group in self._groups():
            data_vars: dict[str, tuple[tuple[str, ...], Any]] = {}
            for (g, name), layout in self._layouts.items():
                if g == group:
                    data_vars[name] = (layout.dims, make_data(layout))
            for name, array in self._static.get(group, {}).items():
                data_vars[name] = (site_dims(name, array.ndim - 2), array)
            coords = position_coords(self._dims_of(group))
            nodes[group] = xr.Dataset(data_vars, coords=coords)
        return tree_from_nodes(nodes, root_attrs)

    def _check_open(self) -> None:
        if self._state != "open":
            raise StreamingError(f"Cannot write to a sink that is {self._state}.")

    def _prepare(
        self, group: str, name: str, index: tuple[slice, ...], block: np.ndarray
    ) -> tuple[SiteLayout, np.ndarray, list[slice]]:
        self._check_open()
        try:
            layout = self._layouts[(group, name)]
        except KeyError:
            raise KeyError(f"Variable {group}/{name} was not declared at open.") from None
        array = np.asarray(block)
        dtype = np.dtype(layout.dtype)
        if array.dtype != dtype:
            if not np.can_cast(array.dtype, dtype, casting="same_kind"):
                raise TypeError(
                    f"Block for {group}/{name} has dtype {array.dtype}; expected {dtype}."
                )
            array = array.astype(dtype)
        return layout, array, resolve_index(layout, index, array.shape)
