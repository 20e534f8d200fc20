#!/usr/bin/env bash
# The GPU benchmarks, from anywhere: bash benchmarks/gpu.sh [gpu.py options, e.g. --compile --budget SECONDS]
# gpu.py: embedding, about 5 minutes on an H100/H200 (6 at most); bench_caption.py --gpu: captioning, about 3;
# bench_train.py: training steps, about 3; bench_students.py: the students at real sizes, about 1. Each writes its JSON under benchmarks/results/ as it goes; a failing
# step does not stop the next one, and the exit status is the first non-zero one.
set -u
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH=.
status=0
step() { "$@" || { rc=$?; echo "gpu.sh: '$*' exited with $rc" >&2; [ "$status" -eq 0 ] && status=$rc; }; }

step python benchmarks/gpu.py "$@"
step python benchmarks/bench_caption.py --gpu
step python benchmarks/bench_train.py
step python benchmarks/bench_students.py

exit "$status"
