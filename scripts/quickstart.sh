#!/usr/bin/env bash
# Quickstart: continued-pretrain SmolLM2-135M on the Python standard library (CPU or GPU), reporting
# held-out loss before and after, generation samples, and a Hugging Face export in runs/quickstart/.
#   bash scripts/quickstart.sh [key=value overrides ...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
RUN=(.venv/bin/cptrain run recipes/quickstart.toml checkpoint.resume=never "$@")
# a mistyped override is refused here, before the previous run folder is touched
"${RUN[@]}" --dry-run >/dev/null
# the quickstart always starts from the pretrained model: a run into a folder that holds an earlier run's
# checkpoints is refused, so its own folder (the recipe's train.run_dir) is cleared first; --dry-run keeps it
case " $* " in
  *" train.run_dir="* | *" --dry-run "*) ;;
  *) if [ -d runs/quickstart ]; then
       echo "quickstart: replacing the previous run folder runs/quickstart"
       rm -rf runs/quickstart
     fi ;;
esac
exec "${RUN[@]}"
