#!/usr/bin/env bash
# The whole SPA-RL pipeline for one environment: data -> SFT -> exploration -> estimator -> RL (spa) -> eval.
#   bash examples/pipeline_spa.sh <alfworld|webshop|virtualhome>
# Steps can be skipped with SKIP="prepare sft collect estimator rl eval" (any subset).
source "$(dirname "$0")/common.sh"
check_env "${1:-}"; ENV=$1; shift
HERE=$(dirname "$0")
SKIP=${SKIP:-}
skip() { [[ " $SKIP " == *" $1 "* ]]; }
latest_hf() {  # newest HF export of a verl SFT run
  local d; d=$(ls -d "$SFT_DIR/$ENV"/global_step_*/huggingface 2>/dev/null | sort -V | tail -n 1 || true)
  echo "${d:-$SFT_DIR/$ENV/global_step_LAST/huggingface}"
}
skip prepare || bash "$HERE/prepare_data.sh" "$ENV"
skip sft || bash "$HERE/sft.sh" "$ENV"
export SFT_MODEL=${SFT_MODEL:-$(latest_hf)}
skip collect || bash "$HERE/collect.sh" "$ENV"
skip estimator || bash "$HERE/train_estimator.sh" "$ENV"
skip rl || RL_INIT=$SFT_MODEL bash "$HERE/rl_spa.sh" "$ENV" "$@"
# eval: the SFT policy by default; set RL_MODEL to an HF export of the RL run (python -m verl.model_merger merge
# --backend fsdp --local_dir outputs/rl/<env>/<experiment>/checkpoints/global_step_<N>/actor --target_dir <hf dir>)
skip eval || MODEL=${RL_MODEL:-$SFT_MODEL} bash "$HERE/eval.sh" "$ENV"
