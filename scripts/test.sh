#!/usr/bin/env bash
# The test suite: sets up .venv with the dev extras, then runs pytest (GPU tests skip without CUDA).
#   bash scripts/test.sh [pytest args ...]
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=dev bash scripts/setup_env.sh
# in CI (as root) start a one-node SLURM so the dedup SLURM test runs for real; elsewhere it skips
if [ "${CI:-}" = "true" ] && [ "$(id -u)" = 0 ]; then
  bash scripts/local_slurm.sh || echo "local SLURM could not start: its test will be skipped"
fi
exec .venv/bin/python -m pytest -q "$@"
