#!/usr/bin/env bash
# SFT of the base model on expert trajectories with verl's engine SFT trainer (SPA-RL: lr 2e-5, 3 epochs,
# batch 16, full fine-tune). The HF-format weights end up in $SFT_DIR/<env>/global_step_<N>/huggingface.
#   bash examples/sft.sh <alfworld|webshop|virtualhome> [hydra overrides...]
source "$(dirname "$0")/common.sh"
check_env "${1:-}"; ENV=$1; shift
cpu_sft=()
if [[ "$PLATFORM" == cpu ]]; then  # verl's SFT trainer on the cpu platform: FSDP2 on gloo, sdpa, padded batches
  SFT_EPOCHS=${SFT_EPOCHS:-1} SFT_BATCH=${SFT_BATCH:-2}
  cpu_sft=(trainer.device=cpu engine.strategy=fsdp2 +model.override_config.attn_implementation=sdpa
           model.use_remove_padding=false)
fi
SFT_LR=${SFT_LR:-2e-5}
SFT_EPOCHS=${SFT_EPOCHS:-3}
SFT_BATCH=${SFT_BATCH:-16}
SFT_MAX_LENGTH=${SFT_MAX_LENGTH:-16384}
args=(
  "data.train_files=$DATA_DIR/${ENV}_sft.parquet" data.val_files=null
  data.messages_key=messages "data.max_length=$SFT_MAX_LENGTH" data.truncation=error
  data.pad_mode=no_padding data.use_dynamic_bsz=true "data.max_token_len_per_gpu=$MAX_TOKEN_LEN_PER_GPU"
  "data.train_batch_size=$SFT_BATCH" data.micro_batch_size_per_gpu=1
  "model.path=$MODEL_PATH" "optim.lr=$SFT_LR"
  "trainer.n_gpus_per_node=$N_GPUS" "trainer.nnodes=$NNODES" "trainer.total_epochs=$SFT_EPOCHS"
  trainer.project_name=spa_rl_sft "trainer.experiment_name=$ENV" "trainer.logger=$LOGGER"
  "trainer.default_local_dir=$SFT_DIR/$ENV" trainer.save_freq=-1
  "checkpoint.save_contents=[model,optimizer,extra,hf_model]"
  ${cpu_sft[@]+"${cpu_sft[@]}"}
  "$@"
)
if [[ "$DRY_RUN" == 1 ]]; then
  not_yet_there "$(override_value data.train_files "${args[@]}")" "the expert demonstrations" \
    "bash examples/prepare_data.sh $ENV"
  run_cmd_dry=("$PYTHON" -m verl.trainer.sft_trainer "${args[@]}" --cfg job)
  "${run_cmd_dry[@]}"
else
  # verl's file logger (LOGGER has `file` by default) writes beside the checkpoints, one file per launch
  export VERL_FILE_LOGGER_PATH=${VERL_FILE_LOGGER_PATH:-$SFT_DIR/$ENV/logs/metrics_$(date -u +%Y%m%dT%H%M%SZ).jsonl}
  mkdir -p "$(dirname "$VERL_FILE_LOGGER_PATH")"
  run_cmd torchrun --standalone --nnodes=1 "--nproc_per_node=$N_GPUS" -m verl.trainer.sft_trainer "${args[@]}"
fi
