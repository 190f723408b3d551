"""The sink protocol: where streamed draws go.

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

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import xarray as xr

from dopax.output.schema import SiteLayout

__all__ = ["Sink", "StaticData"]

#: Small variables written whole at open: ``{group: {name: array}}``, each array
#: shaped ``(chain, draw, *shape)``.
StaticData = Mapping[str, Mapping[str, np.ndarray]]


@runtime_checkable
class Sink(Protocol):
    """Destination of streamed draws.

    ``write`` may be called from several threads at once; ``open``, ``close``
    and ``abort`` are called from one thread, with no ``write`` in flight.
    """

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
        """
        ...

    def write(self, group: str, name: str, index: tuple[slice, ...], block: np.ndarray) -> None:
        """Store one block of draws.

        Args:
            group: The variable's group.
            name: The variable's name.
            index: Slices into the flat layout ``(S, *shape)``; trailing
                dimensions left out are taken whole.
            block: The values, shaped like ``index`` selects.
        """
        ...

    def add_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Add root attributes known only after the last block (called before ``close``).

        Args:
            attrs: JSON-serialisable attributes.
        """
        ...

    def close(self) -> xr.DataTree:
        """Finalise the result and return it."""
        ...

    def abort(self) -> None:
        """Discard the result so that nothing reads as complete."""
        ...

    def discard(self) -> None:
        """Remove a finished result whose call failed afterwards (a no-op in memory)."""
        ...
