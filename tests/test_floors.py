"""pyproject.toml's lower bounds are the versions CI tests (.ci/lowest installs them through .ci/floors.py), the
ones known to fail are excluded, and the GPU machine's versions stay allowed (issue 21 item 12)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")

ROOT = Path(__file__).resolve().parents[1]
#: The GPU machine's versions (the GPU checks run there): each must stay allowed.
GPU_MACHINE = {"torch": "2.11", "transformers": "5.17", "huggingface-hub": "1.33", "torchmetrics": "1.9"}
#: Versions measured to fail (issue 21): pillow 10.0 has no has_transparency_data; peft 0.17 imports
#: transformers 4 names under transformers 5.
FAILED = {"pillow": "10.0.0", "peft": "0.17.0"}


def _release(text: str) -> tuple[int, ...]:
    numbers = [int(n) for n in re.findall(r"\d+", text)]
    while numbers and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


def _floors_module():
    spec = importlib.util.spec_from_file_location("ci_floors", ROOT / ".ci" / "floors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = {}
    for requirement in project["dependencies"] + project["optional-dependencies"]["train"]:
        name = re.match(r"[A-Za-z0-9_.\-]+", requirement)[0]
        out[name.lower().replace("_", "-")] = requirement[len(name) :]
    return out


def test_the_constraints_pin_every_direct_dependency_to_its_floor():
    floors = _floors_module().floors(ROOT / "pyproject.toml")
    requirements = _requirements()
    assert set(floors) == set(requirements)
    for name, spec in requirements.items():
        assert f">={floors[name]}" in spec.replace(" ", ""), (name, spec)


def test_versions_known_to_fail_are_below_the_floors_and_the_gpu_machine_is_inside():
    floors = _floors_module().floors(ROOT / "pyproject.toml")
    for name, bad in FAILED.items():
        assert _release(bad) < _release(floors[name]), f"{name} {bad} failed, yet pyproject allows it"
    requirements = _requirements()
    for name, version in GPU_MACHINE.items():
        assert _release(floors[name]) <= _release(version), f"the GPU machine's {name} {version} is below the floor"
        for ceiling in re.findall(r"<\s*([0-9][0-9.]*)", requirements[name]):
            assert _release(version) < _release(ceiling), f"the GPU machine's {name} {version} is above {ceiling}"


def test_ci_runs_the_lowest_versions_step():
    run = (ROOT / ".ci" / "run").read_text()
    lowest = (ROOT / ".ci" / "lowest").read_text()
    assert "bash .ci/lowest" in run and run.index("python -m pytest -q") < run.index("bash .ci/lowest")
    assert ".ci/floors.py" in lowest and "tests/test_parity.py" in lowest and "tests/test_loading.py" in lowest
