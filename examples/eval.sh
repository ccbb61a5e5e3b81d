#!/usr/bin/env bash
# Evaluation only: EVAL_REPEATS episodes per test task at the validation temperature, then a table of success
# rate, task score and grounding (executable-action rate), overall and per task type.
#   MODEL=<hf dir or name> bash examples/eval.sh <alfworld|webshop|virtualhome> [hydra overrides...]
source "$(dirname "$0")/common.sh"
check_env "${1:-}"; ENV=$1; shift
MODEL=${MODEL:-$RL_INIT}
EVAL_REPEATS=${EVAL_REPEATS:-1}
EVAL_DIR=${EVAL_DIR:-$OUT_DIR/eval/$ENV/$(basename "$MODEL")}
RL_INIT=$MODEL run_verl "$ENV" \
  data.val_batch_size=null "actor_rollout_ref.rollout.val_kwargs.n=$EVAL_REPEATS" \
  trainer.val_only=true "trainer.validation_data_dir=$EVAL_DIR" "trainer.experiment_name=${ENV}_eval" "$@"
run_cmd "$PYTHON" -m recipe.spa.eval_table "$EVAL_DIR"
