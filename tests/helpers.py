"""Helpers of the saved-model, MLflow and command-line tests: child processes, pickle files."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def subprocess_env() -> dict[str, str]:
    """The environment of a child process: this checkout's code, the kernels module, the venv."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(HERE)])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


def pickle_files(folder: Path) -> list[Path]:
    """Files that are pickles: by name, or by a pickle protocol header (0x80, 2..5)."""
    found = []
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        head = path.read_bytes()[:2]
        by_header = len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5
        if path.suffix in (".pkl", ".pickle") or by_header:
            found.append(path)
    return found


def edit_manifest(folder, change):
    """Apply ``change`` to the folder's ``dopax_model.json`` in place."""
    manifest = json.loads((folder / "dopax_model.json").read_text())
    change(manifest)
    (folder / "dopax_model.json").write_text(json.dumps(manifest))
