#!/usr/bin/env bash
# Installs everything llm-throttle's tests and demo need on a fresh Debian/Ubuntu machine:
# the package with its test extras (pytest, openai, ruff, ...), the real hermes CLI,
# redis-server, nginx and promtool.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    -e ".[test]" "hermes-agent==0.19.0"

# redis-server: the Redis store's tests start their own on a free port.
# nginx: the overhead benchmark's reference (its smoke test leaves nginx out when absent).
# openssl: the https-upstream tests make their CA and certificates with it.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
# prometheus: for promtool, which checks /metrics and unit-tests deploy/prometheus alert rules.
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (apt-get)" >&2
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
