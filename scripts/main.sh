#!/usr/bin/env bash
# The main job: set up (venv + packages) and run the flagship simulation experiment.
# Extra arguments go to `dimint experiment run`.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
dimint_venv dev
cd "$ROOT"
exec "$VENV/bin/dimint" experiment run rebalancing "$@"
