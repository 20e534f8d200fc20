"""What the docs promise about installs and limits holds (issue 21 item 11): every Python snippet of
docs/search.md runs with ``pip install "relsim[search]"`` (or the extra its paragraph names), and ``relsim index``
says in its help that it needs 256 rows."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from relsim.cli import build_parser

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")

ROOT = Path(__file__).resolve().parents[1]
#: Import names of distributions whose name differs, and what a distribution brings along (lancedb: pyarrow).
IMPORT_NAMES = {"pillow": {"PIL"}, "huggingface-hub": {"huggingface_hub"}, "lancedb": {"lancedb", "pyarrow"}}
#: Table methods that need a package of their own.
METHOD_NEEDS = {"to_pandas": "pandas", "to_polars": "polars"}


def _names(requirements: list[str]) -> set[str]:
    names = set()
    for requirement in requirements:
        dist = re.match(r"[A-Za-z0-9_.\-]+", requirement)[0].lower().replace("_", "-")
        names |= IMPORT_NAMES.get(dist, {dist})
    return names


def _blocks_with_extra(doc: str) -> list[tuple[str, str]]:
    """Each ```python block of ``doc`` with the extra the prose just before it installs (default: search)."""
    out = []
    for match in re.finditer(r"```python\n(.*?)```", doc, flags=re.S):
        section = doc[: match.start()].rsplit("\n#", 1)[-1]
        named = re.findall(r'relsim\[(\w+)\]', section)
        out.append((match[1], named[-1] if named else "search"))
    return out


def test_search_doc_snippets_need_nothing_beyond_their_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = _names(project["dependencies"]) | {"relsim"}
    blocks = _blocks_with_extra((ROOT / "docs" / "search.md").read_text())
    assert {extra for _, extra in blocks} == {"search", "ray", "serve"}
    checked = 0
    for code, extra in blocks:
        try:
            tree = ast.parse(code)
        except SyntaxError:  # a signature shown as text, not code
            continue
        allowed = core | _names(project["optional-dependencies"][extra])
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported.add(node.module.split(".")[0])
        needed = imported - set(sys.stdlib_module_names)
        needed |= {METHOD_NEEDS[m] for m in re.findall(r"\.(\w+)\(", code) if m in METHOD_NEEDS}
        assert needed <= allowed, f"docs/search.md needs {sorted(needed - allowed)} beyond relsim[{extra}]:\n{code}"
        checked += 1
    assert checked >= 5


def test_index_help_and_docs_say_it_needs_256_rows(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["index", "--help"])
    assert "at least 256 rows" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    assert "256 rows" in capsys.readouterr().out
    for doc in ("search.md", "cli.md"):
        assert "256 rows" in " ".join((ROOT / "docs" / doc).read_text().split()), doc
