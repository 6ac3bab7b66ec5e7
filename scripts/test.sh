#!/usr/bin/env bash
# The whole test suite: set up (venv, packages, Java, ZooKeeper) then lint and run pytest.
# Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
dimint_system_packages
dimint_venv dev
cd "$ROOT"
"$VENV/bin/ruff" check .
exec "$VENV/bin/python" -m pytest "$@"
