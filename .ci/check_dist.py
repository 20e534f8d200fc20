"""Check what `python -m build` made: the wheel holds relsim/ (every module of the checkout, py.typed, the serve
app's static files, the license) and nothing else; the sdist holds the package and the tests with their fixtures.

Usage: python .ci/check_dist.py DIST_DIR   (run from the repository root)
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

sys.path.insert(0, ".")
from relsim import __version__  # noqa: E402  (the checkout's version: what the files must say)


def fail(message: str) -> None:
    sys.exit(f"check_dist: {message}")


def main(dist: Path) -> None:
    wheels = sorted(dist.glob("relsim-*.whl"))
    sdists = sorted(dist.glob("relsim-*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        fail(f"expected one wheel and one sdist in {dist}, found {[p.name for p in dist.iterdir()]}")
    wheel, sdist = wheels[0], sdists[0]
    if f"relsim-{__version__}-" not in wheel.name:
        fail(f"{wheel.name} does not carry relsim.__version__ {__version__}")

    names = set(zipfile.ZipFile(wheel).namelist())
    info = f"relsim-{__version__}.dist-info/"
    tracked = subprocess.run(["git", "ls-files", "relsim"], capture_output=True, text=True, check=True).stdout
    modules = {line for line in tracked.split() if line.endswith(".py")}
    static = {line for line in tracked.split() if "/static/" in line}  # the files `relsim serve` sends
    required = modules | static | {"relsim/py.typed", f"{info}licenses/LICENSE", f"{info}METADATA"}
    required.add(f"{info}entry_points.txt")
    if missing := sorted(required - names):
        fail(f"{wheel.name} lacks {missing}")
    if stray := sorted(n for n in names if not n.startswith(("relsim/", info))):
        fail(f"{wheel.name} holds files outside relsim/: {stray[:10]}")
    if stray := sorted(n for n in names if any(part in n for part in ("tests/", "benchmarks/", "fixtures", "docs/"))):
        fail(f"{wheel.name} holds test, benchmark or docs files: {stray[:10]}")
    metadata = Parser().parsestr(zipfile.ZipFile(wheel).read(f"{info}METADATA").decode())
    if metadata["Version"] != __version__ or metadata["License-Expression"] != "MIT":
        fail(f"METADATA says version {metadata['Version']}, license {metadata['License-Expression']}")
    if "relsim = relsim.cli:main" not in zipfile.ZipFile(wheel).read(f"{info}entry_points.txt").decode():
        fail("the relsim console script is not declared")

    root = f"relsim-{__version__}/"
    members = {m[len(root) :] for m in tarfile.open(sdist).getnames() if m.startswith(root)}
    tests = subprocess.run(["git", "ls-files", "tests"], capture_output=True, text=True, check=True).stdout.split()
    needed = {"LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "relsim/py.typed"} | modules | set(tests)
    if missing := sorted(needed - members):
        fail(f"{sdist.name} lacks {missing[:10]}")
    print(f"check_dist: {wheel.name} ({len(names)} files) and {sdist.name} ({len(members)} entries) are complete")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
