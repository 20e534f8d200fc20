"""griffe extension: docstrings' doctest lines (``>>> ...`` and the output after them) render as Python console
code blocks on the docs site instead of Markdown block quotes; the docstrings themselves stay plain doctests."""

from __future__ import annotations

import griffe


def fence_doctests(text: str) -> str:
    """Wrap each run of lines that starts with ``>>>`` (up to the next blank line) in a ```` ```pycon ```` fence."""
    out: list[str] = []
    indent: str | None = None
    for line in text.splitlines():
        stripped = line.lstrip()
        if indent is None and stripped.startswith(">>>"):
            indent = line[: len(line) - len(stripped)]
            out.append(f"{indent}```pycon")
        elif indent is not None and not stripped:
            out.append(f"{indent}```")
            indent = None
        out.append(line)
    if indent is not None:
        out.append(f"{indent}```")
    return "\n".join(out)


class DoctestBlocks(griffe.Extension):
    """Fence the doctest lines of every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence_doctests(obj.docstring.value)
