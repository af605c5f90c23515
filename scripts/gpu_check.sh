#!/usr/bin/env bash
# Engine alone vs. through NeuroAPI, tokens/s on this machine's GPU (see benchmarks/gpu_check.py).
cd "$(dirname "$0")/.." && PY=.venv/bin/python && { [ -x "$PY" ] || PY=python3; }
exec "$PY" -m benchmarks.gpu_check "$@"
