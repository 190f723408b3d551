"""The documentation covers every public name, with its parameters and return value."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
API = REPO / "docs" / "api"

#: The public modules and the names each exports.
PUBLIC = (
    "dopax",
    "dopax.config",
    "dopax.exceptions",
    "dopax.data",
    "dopax.effects",
    "dopax.answers",
    "dopax.mlflow",
)


def _documented() -> set[str]:
    """Fully qualified names the API pages document (autodoc directives)."""
    names: set[str] = set()
    for page in API.glob("*.md"):
        text = page.read_text()
        for kind, target, options in re.findall(
            r"\.\. auto(class|function|module|data):: (\S+)\n((?:   :.*\n)*)", text
        ):
            if kind != "module":
                names.add(target)
                continue
            listed = re.search(r":members:(.*)", options)
            module = importlib.import_module(target)
            members = (listed.group(1).strip() if listed else "") or ",".join(module.__all__)
            names.update(f"{target}.{m.strip()}" for m in members.split(",") if m.strip())
    return names


def _public(module_name: str) -> list[tuple[str, Any]]:
    module = importlib.import_module(module_name)
    return [
        (f"{module_name}.{name}", getattr(module, name))
        for name in module.__all__
        if not name.startswith("__")
    ]


def _all_public() -> list[tuple[str, Any]]:
    return [item for name in PUBLIC for item in _public(name)]


def test_every_public_name_has_an_api_entry() -> None:
    documented = _documented()
    missing = [name for name, _ in _all_public() if name not in documented]
    assert not missing, f"public names without an API entry in docs/api: {missing}"


def _sections(doc: str) -> dict[str, str]:
    """Google-style sections of a docstring, by heading."""
    out: dict[str, str] = {}
    current = None
    for line in inspect.cleandoc(doc).splitlines():
        head = re.fullmatch(r"(Args|Returns|Yields|Raises|Attributes|Warns|Examples?):", line)
        if head:
            current = head.group(1)
            out[current] = ""
        elif current is not None:
            out[current] += line + "\n"
    return out


def _callables(name: str, obj: Any) -> list[tuple[str, Any]]:
    if inspect.isfunction(obj):
        return [(name, obj)]
    if not inspect.isclass(obj) or issubclass(obj, BaseException):
        return []
    out = [(name, obj)]
    for attr, value in inspect.getmembers(obj):
        if attr.startswith("_") or isinstance(inspect.getattr_static(obj, attr), property):
            continue
        if inspect.isfunction(value) and value.__module__.startswith("dopax"):
            out.append((f"{name}.{attr}", value))
    return out


def _problems(name: str, fn: Any) -> list[str]:
    doc = inspect.getdoc(fn) or ""
    if not doc:
        return [f"{name}: no docstring"]
    sections = _sections(doc)
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return []
    problems = []
    args = sections.get("Args", "")
    if inspect.isclass(fn):  # a class documents its arguments, or its fields, once
        init = _sections(inspect.getdoc(fn.__init__) or "") if "__init__" in vars(fn) else {}
        args += sections.get("Attributes", "") + init.get("Args", "")
    for param in signature.parameters.values():
        if param.name in ("self", "cls"):
            continue
        label = {param.VAR_POSITIONAL: "*", param.VAR_KEYWORD: "**"}.get(param.kind, "")
        if not re.search(rf"^\s*{re.escape(label + param.name)}\b", args, flags=re.M):
            problems.append(f"{name}: parameter {label}{param.name} not documented")
    returns = signature.return_annotation
    if (
        not inspect.isclass(fn)
        and returns not in (None, "None", inspect.Signature.empty)
        and not ("Returns" in sections or "Yields" in sections)
        and not doc.startswith("Return")
    ):
        problems.append(f"{name}: return value not documented")
    return problems


def test_every_public_callable_documents_its_parameters_and_return() -> None:
    problems = [
        issue
        for name, obj in _all_public()
        for sub, fn in _callables(name, obj)
        for issue in _problems(sub, fn)
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", sorted(p.name for p in API.glob("*.md")))
def test_api_pages_are_in_the_index(page: str) -> None:
    assert page == "index.md" or page[:-3] in (API / "index.md").read_text()
