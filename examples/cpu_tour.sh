#!/usr/bin/env bash
# The estimator path on a CPU in a few minutes, no GPU and no download (README: "Try it on a CPU"):
# real WebShop episodes (expert + perturbed failures) -> trajectory records with a tiny tokenizer -> a tiny progress
# estimator (eval Pearson printed) -> attribution PNG -> grpo/gigpo/spa advantages on those records.
#   bash examples/cpu_tour.sh [webshop] [--output outputs/tour] [--tasks 32] [--data-dir DIR]
# Data: --data-dir, else $SPA_DATA/webshop, else ../shared/data/webshop beside the repo. Details: recipe/spa/tour.py.
set -euo pipefail
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_DIR"
export PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m recipe.spa.tour "$@"
