#!/usr/bin/env bash
# Installs everything llm-throttle's tests and demo need on a fresh Debian/Ubuntu machine:
# the package with its test extras, the real hermes CLI, and redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[test]" "hermes-agent==0.19.0"

if ! command -v redis-server >/dev/null 2>&1; then
    echo "installing redis-server (apt-get)" >&2
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi
