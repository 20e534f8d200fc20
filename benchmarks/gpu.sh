#!/usr/bin/env bash
# Run the GPU benchmarks from the repository root: bash benchmarks/gpu.sh [--compile] [--budget SECONDS]
# (gpu.py: embedding; bench_caption.py --gpu: captioning, about 3 minutes; bench_train.py: training steps, about 3)
cd "$(dirname "$0")/.." && PYTHONPATH=. python benchmarks/gpu.py "$@" && PYTHONPATH=. python benchmarks/bench_caption.py --gpu \
  && PYTHONPATH=. exec python benchmarks/bench_train.py
