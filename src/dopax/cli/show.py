"""``dopax show``: what a result folder or a saved model holds, in plain text."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, TextIO

__all__ = ["show"]

_WIDTH = 100


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= _WIDTH else text[: _WIDTH - 3] + "..."


def _show_model(path: str, out: TextIO) -> int:
    from dopax.exceptions import SavedModelError
    from dopax.persist.files import Folder
    from dopax.persist.manifest import read_manifest
    from dopax.sampling.inputs import ArgSchema
    from dopax.tables.tabular import column_range

    try:
        m = read_manifest(Folder(path))
    except SavedModelError as err:
        print(f"dopax show: error: {err}", file=sys.stderr)
        return 2
    kernel = m["kernel"]
    where = kernel.get("ref") or kernel.get("name") or kernel.get("reason")
    print(f"saved model {os.path.abspath(path)}", file=out)
    print(f"  saved at:   {m.get('created_at')}", file=out)
    print(f"  versions:   {_value(m['versions'])}", file=out)
    print(f"  kernel:     {kernel['kind']} {where}", file=out)
    inference = m["inference"]
    kind = inference["kind"] if inference["kind"] != "pickle" else f"pickle ({inference['reason']})"
    print(f"  inference:  {kind}", file=out)
    print(f"  input/output: {m['param_input']!r} / {m['param_output']!r}", file=out)
    inputs = m.get("inputs")
    if inputs:
        for arg in inputs["rows"]:
            first, last = column_range(ArgSchema.from_json(arg))
            shown = first if first == last else f"{first} .. {last}"
            print(
                f"  argument {arg['name']!r}: {arg['dtype']} per row {arg['shape']}, "
                f"columns {shown}",
                file=out,
            )
        for name, value in inputs["static"].items():
            print(f"  argument {name!r}: static {_value(value)}", file=out)
    post = m.get("posterior")
    if post is None:
        print("  posterior:  none", file=out)
    else:
        print(f"  posterior:  {post['num_draws']} draws in {post['num_chains']} chain(s)", file=out)
        for name, site in post["sites"].items():
            print(f"    {name:<20} {site['dtype']:<8} {site['shape']}", file=out)
    return 0


def show(path: str, out: TextIO | None = None) -> int:
    """Print what ``path`` holds; return 0 for a complete result or a saved model, else 1.

    Args:
        path: A result folder or a saved model folder.
        out: Where to print (default: standard output).
    """
    import xarray as xr

    from dopax.output.store import COMPLETE_ATTR, is_complete, open_result
    from dopax.persist.manifest import MANIFEST

    out = out if out is not None else sys.stdout
    if os.path.exists(os.path.join(path, MANIFEST)):
        return _show_model(path, out)
    if not os.path.isdir(path):
        print(f"dopax show: error: RESULT {path}: no such folder.", file=sys.stderr)
        return 2
    complete = is_complete(path)
    try:
        if complete:
            tree = open_result(path)
        else:
            tree = xr.open_datatree(path, engine="zarr", consolidated=False, chunks={})
    except Exception as err:
        print(f"dopax show: error: RESULT {path} cannot be read: {err}", file=sys.stderr)
        return 1
    print(f"result {os.path.abspath(path)}", file=out)
    state = "yes" if complete else "NO: the call that wrote it did not finish"
    print(f"complete: {state}", file=out)
    for node in tree.subtree:
        name = "/" + node.path.lstrip("/") if node.path not in (".", "/") else "/"
        ds = node.to_dataset(inherit=False)
        sizes = ", ".join(f"{d}: {n}" for d, n in ds.sizes.items())
        print(f"group {name}" + (f"  ({sizes})" if sizes else ""), file=out)
        for var_name, var in ds.data_vars.items():
            dims = ", ".join(str(d) for d in var.dims)
            shape = "x".join(str(s) for s in var.shape) or "scalar"
            print(f"  {var_name:<24} {var.dtype!s:<8} {shape:<20} ({dims})", file=out)
        for key, value in node.attrs.items():
            if key != COMPLETE_ATTR:
                print(f"  @{key}: {_value(value)}", file=out)
    return 0 if complete else 1
