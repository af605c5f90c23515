#!/usr/bin/env bash
# Installs what NeuroAPI needs into ./.venv on a fresh Debian/Ubuntu machine: a Python
# 3.11/3.12 virtual environment, the package (with --test its test tools, with --bench the
# benchmark's too), and redis-server for the embedded Redis. Safe to run again; it only adds what is missing.
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
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".${extras}"
echo "installed: $(.venv/bin/neuroapi --help >/dev/null && echo neuroapi) in $(pwd)/.venv" >&2
