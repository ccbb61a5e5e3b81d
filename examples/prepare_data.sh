#!/usr/bin/env bash
# Task parquet files (one row per task, agent_name=env_agent) and expert SFT data for one environment:
#   $DATA_DIR/<env>_{train,val,test}.parquet   (python -m envs.prepare)
#   $DATA_DIR/<env>_sft.parquet                (python -m envs.expert: won expert episodes as chats)
#   bash examples/prepare_data.sh <alfworld|webshop|virtualhome>
source "$(dirname "$0")/common.sh"
check_env "${1:-}"; ENV=$1; shift
STYLE=${STYLE:-react}
data_dir=()
if [[ "$(env_data_dir "$ENV")" != null ]]; then data_dir=(--data-dir "$(env_data_dir "$ENV")"); fi
run_cmd "$PYTHON" -m envs.prepare "$ENV" --output-dir "$DATA_DIR" ${data_dir[@]+"${data_dir[@]}"} "$@"
run_cmd "$PYTHON" -m envs.expert "$ENV" --output "$DATA_DIR/${ENV}_sft.parquet" --style "$STYLE" \
  ${data_dir[@]+"${data_dir[@]}"}
