#!/usr/bin/env bash
# Run the GPU benchmark from the repository root: bash benchmarks/gpu.sh [--compile] [--budget SECONDS]
cd "$(dirname "$0")/.." && PYTHONPATH=. exec python benchmarks/gpu.py "$@"
