"""mkdocs hook: the API reference pages, and a check that everything they document has a docstring.

Every nav entry ``reference/<module>.md`` whose file does not exist in docs/ becomes a generated page rendering
``::: <module>`` with mkdocstrings, so documenting a new module is one nav line in mkdocs.yml. For each such
module, the public functions and classes it defines (its ``__all__``, or else every name without a leading
underscore) and their public methods and properties need a docstring: a missing one is a warning, and
``mkdocs build --strict`` fails on warnings.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import griffe
from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.api_reference")
_PAGE = re.compile(r"^reference/(relsim(?:\.\w+)*)\.md$")


def _nav_paths(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [p for value in node.values() for p in _nav_paths(value)]
    if isinstance(node, list):
        return [p for item in node for p in _nav_paths(item)]
    return []


def api_modules(config) -> list[str]:
    """The modules the nav documents with a generated page, in nav order."""
    return [m.group(1) for p in _nav_paths(config["nav"]) if (m := _PAGE.match(p))]


def on_files(files, config):
    for module in api_modules(config):
        path = f"reference/{module}.md"
        if files.get_file_from_path(path) is None:
            files.append(File.generated(config, path, content=f"# {module}\n\n::: {module}\n"))
    return files


def _public(obj) -> list:
    exports = obj.exports if obj.is_module and obj.exports is not None else None
    names = [str(n) for n in exports] if exports is not None else [n for n in obj.members if not n.startswith("_")]
    members = [obj.members[n] for n in names if n in obj.members]
    return [m for m in members if not m.is_alias and (m.is_function or m.is_class)]


def undocumented(module: griffe.Module) -> list[str]:
    """Dotted paths of the public functions, classes, methods and properties of ``module`` without a docstring."""
    missing = []
    for obj in _public(module):
        if not obj.docstring:
            missing.append(obj.path)
        if obj.is_class:
            for name, member in obj.members.items():
                public = not name.startswith("_") and not member.is_alias
                if public and (member.is_function or member.is_attribute and "property" in member.labels):
                    if not member.docstring:
                        missing.append(member.path)
    return missing


def on_pre_build(config) -> None:
    root = Path(config["config_file_path"]).parent
    package = griffe.load("relsim", search_paths=[str(root)], resolve_aliases=False)
    for name in api_modules(config):
        module = package if name == "relsim" else package[name.removeprefix("relsim.")]
        for path in undocumented(module):
            log.warning(f"{path} has no docstring (documented by reference/{name}.md)")
