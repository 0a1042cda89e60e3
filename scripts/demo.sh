#!/usr/bin/env bash
# First run: installs llm-throttle, starts the bundled GPU-like mock LLM and the proxy on the
# embedded store (cap 4), floods it with a short overload, and shows the cap hold and the
# queue drain. Extra arguments go to `python -m loadtest demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    -e ".[loadtest]"
exec "$PYTHON" -m loadtest demo "$@"
