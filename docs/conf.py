"""Sphinx configuration of dopax's documentation (``make docs`` builds it into ``docs/_build``)."""

from __future__ import annotations

import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "src"))

from dopax import __version__  # noqa: E402

project = "dopax"
author = "dopax developers"
copyright = "2026, dopax developers"  # noqa: A001
release = __version__
version = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinxarg.ext",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_generated"]
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

# Google-style docstrings, each parameter documented once (ruff's D417 checks it).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_mock_imports: list[str] = []

# Broken cross-references are errors (``-n -W``). Types from other projects have
# no inventory here (the build reads nothing from the network), so references
# to them are not checked; references inside dopax are.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(jax|jaxlib|numpy|np|numpyro|xarray|xr|zarr|pandas|pd|dask|distributed|"
     r"mlflow|matplotlib|arviz|fsspec|concurrent|collections|typing|os|pathlib|argparse|"
     r"builtins|contextlib|dataclasses|types)(\..*)?"),
    (r"py:class", r"(Any|Callable|Mapping|Sequence|Iterable|Iterator|Path|PathLike|"
     r"ArrayLike|T|optional|callable|array|array-like|dict|list|tuple|Axes|Figure)"),
    (r"py:.*", r".*\.Array"),
]

html_theme = "furo"
html_title = f"dopax {version}"
html_static_path: list[str] = []


def _cli_epilog() -> None:
    """Write the command line's examples (its parser's epilog) for ``cli.md`` to include."""
    from dopax.cli.main import build_parser

    folder = os.path.join(os.path.dirname(__file__), "_generated")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "cli_epilog.txt"), "w", encoding="utf-8") as f:
        f.write(build_parser().epilog or "")


_cli_epilog()
