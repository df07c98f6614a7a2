#!/usr/bin/env bash
# Quickstart: continued-pretrain SmolLM2-135M on the Python standard library (CPU or GPU), reporting
# held-out loss before and after, generation samples, and a Hugging Face export in runs/quickstart/.
#   bash scripts/quickstart.sh [key=value overrides ...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/cptrain run recipes/quickstart.toml checkpoint.resume=never "$@"
