"""The ``dopax`` command line (:func:`dopax.cli.main.main`; ``python -m dopax``)."""
