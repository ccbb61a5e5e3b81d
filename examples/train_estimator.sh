#!/usr/bin/env bash
# Progress estimator on the exploration records (SPA-RL: the SFT checkpoint as backbone, lr 3e-6, 1 epoch, effective
# batch 16). SPA_OBJECTIVE: prefix (default, ours: the value of the prefix before every step regressed on R) or sum
# (the paper's MSE(sum_t c_t, R)); examples/rl_spa.sh must run with the same SPA_OBJECTIVE.
# Output: $ESTIMATOR_DIR/<env> (use it with examples/rl_spa.sh).
#   SFT_MODEL=<hf dir> bash examples/train_estimator.sh <alfworld|webshop|virtualhome> [extra train.py args...]
# A rerun into the same folder needs --resume (continue) or --overwrite (delete the old run first); episodes that
# ended by an env error are skipped (--include-env-failures keeps them).
source "$(dirname "$0")/common.sh"
check_env "${1:-}"; ENV=$1; shift
SFT_MODEL=${SFT_MODEL:-$RL_INIT}
EST_MAX_LENGTH=${EST_MAX_LENGTH:-16384}
SPA_OBJECTIVE=${SPA_OBJECTIVE:-prefix}  # = rl_spa.sh's
launcher=("$PYTHON")
if [[ "$N_GPUS" -gt 1 ]]; then launcher=(torchrun --standalone "--nproc_per_node=$N_GPUS"); fi
not_yet_there "$COLLECT_DIR/$ENV" "the exploration records" "bash examples/collect.sh $ENV"
run_cmd "${launcher[@]}" -m spa_reward.progress.train \
  --records "$COLLECT_DIR/$ENV" --model "$SFT_MODEL" --output "$ESTIMATOR_DIR/$ENV" \
  --objective "$SPA_OBJECTIVE" --lr 3e-6 --epochs 1 --batch-size 2 --max-length "$EST_MAX_LENGTH" \
  --gradient-checkpointing "$@"
