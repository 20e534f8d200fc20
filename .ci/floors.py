"""Print a pip constraints file pinning every direct dependency to the lowest version pyproject.toml allows.

The core dependencies and the [train] extra (peft: the parity tests' reference applies LoRA with it) each get
``name==floor``. Packages named with ``--skip`` are left out (CI installs torch on its own: see .ci/lowest).

Usage: python3 .ci/floors.py [--skip torch] > constraints.txt   (Python 3.11+, from the repository root)
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import tomllib

EXTRAS = ("train",)  # the optional dependencies the lowest-versions tests import


def floors(pyproject: Path = Path("pyproject.toml")) -> dict[str, str]:
    """``{name: lowest allowed version}`` of the core dependencies and EXTRAS, from each ``>=`` bound.

    >>> floors()["pillow"]  # doctest: +SKIP
    '10.1'
    """
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in EXTRAS:
        requirements += project["optional-dependencies"][extra]
    result = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*>=\s*([0-9][0-9A-Za-z.]*)\s*(?:,.*)?", requirement)
        if match is None:
            raise SystemExit(f"pyproject.toml: {requirement!r} has no '>=' floor")
        result[match[1].lower().replace("_", "-")] = match[2]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip", action="append", default=[], help="a package to leave out (repeatable)")
    args = parser.parse_args()
    for name, version in floors().items():
        if name not in args.skip:
            print(f"{name}=={version}")


if __name__ == "__main__":
    main()
