"""How long the ``relsim`` command takes to start: ``--version`` and ``--help``, best of N fresh processes.

    python benchmarks/bench_cli_start.py            # prints a table, writes benchmarks/results/cli_start.json

The command imports neither torch nor transformers before a subcommand needs them (tests/test_conventions.py
checks that), so it should start about as fast as Python itself; target: under 1 s. For scale the table also
times a bare interpreter (``python -c pass``) and ``import torch``, which a non-lazy command would pay.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def best_of(argv: list[str], repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` runs of ``argv`` (each must exit 0)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, timeout=300)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    script = shutil.which("relsim", path=str(Path(sys.executable).parent)) or shutil.which("relsim")
    command = [script] if script else [sys.executable, "-m", "relsim.cli"]
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "relsim --version": [*command, "--version"],
        "relsim --help": [*command, "--help"],
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    }
    rows = [{"command": name, "seconds": best_of(cmd, args.repeats)} for name, cmd in cases.items()]
    baseline = rows[0]["seconds"]
    for row in rows:
        row["vs_bare_python"] = row["seconds"] / baseline
    print(f"{'command':<28} {'best s':>8} {'x python':>9}   (best of {args.repeats})")
    for row in rows:
        print(f"{row['command']:<28} {row['seconds']:>8.3f} {row['vs_bare_python']:>9.1f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cli_start.json").write_text(json.dumps({"repeats": args.repeats, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
