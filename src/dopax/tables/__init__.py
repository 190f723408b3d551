"""Tables bound to kernel arguments, and per-row summaries of a table's rows.

:mod:`~dopax.tables.tabular` names the columns of kernel arguments,
:mod:`~dopax.tables.scoring` summarises the predictive distribution of every
row in bounded memory, and :class:`~dopax.tables.predictor.TablePredictor`
answers a DataFrame with those summaries (what the MLflow pyfunc serves; it
needs no MLflow).
"""
