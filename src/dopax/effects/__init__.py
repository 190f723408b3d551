"""Intervention effects: posterior summaries, intervals and plots of effect results.

:class:`EffectResult` wraps an effect-result :class:`xarray.DataTree` (per-draw
scenario means, average treatment effects and relative effects, optionally by group
and per row) and offers :meth:`EffectResult.summary` and :meth:`EffectResult.plot`.
:func:`hdi` and :func:`summarize_draws` are the numeric helpers behind them.
"""

from __future__ import annotations

from dopax.effects.result import EffectResult
from dopax.effects.stats import hdi, summarize_draws

__all__ = ["EffectResult", "hdi", "summarize_draws"]
