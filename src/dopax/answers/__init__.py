"""Answers computed where the draws are made: per-row summaries, PSIS-LOO, calibration.

The block programs here (``SummaryProgram``, ``LooProgram``) reduce each
block's draws inside the compiled program that makes them;
:meth:`dopax.ImpactModel.summarize` and :meth:`dopax.ImpactModel.loo` run
them. :func:`plot_calibration` draws the
calibration of a model from a summary result's PIT values.
"""

from __future__ import annotations

from dopax.answers.calibration import PitEcdf, pit_ecdf, pit_values, plot_calibration

__all__ = ["PitEcdf", "pit_ecdf", "pit_values", "plot_calibration"]
