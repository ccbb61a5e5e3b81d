#!/usr/bin/env bash
# Evaluation only: EVAL_REPEATS episodes per test task at the validation temperature, then a table of success
# rate, task score and grounding (executable-action rate), overall and per task type.
#   MODEL=<hf dir or name> [RUN_NAME=<name>] bash examples/eval.sh <alfworld|webshop|virtualhome> [hydra overrides...]
# Output: $OUT_DIR/eval/<env>/<RUN_NAME>/ (default RUN_NAME: a slug of the FULL model path, so two verl exports
# .../global_step_N/actor/huggingface differ). Never resumes a trainer checkpoint (trainer.resume_mode=disable):
# the model evaluated is MODEL. Tasks: <env>_test.parquet when DATA_DIR has it (ALFWorld: valid_unseen, the
# out-of-distribution split), else <env>_val.parquet; the table says which.
source "$(dirname "$0")/common.sh"
check_env "${1:-}"; ENV=$1; shift
MODEL=${MODEL:-$RL_INIT}
EVAL_REPEATS=${EVAL_REPEATS:-1}
# EVAL_REPEATS=1: seeded sampling (verl's rollout.full_determinism: one seed per request, batch-invariant vLLM), so
# one checkpoint gives the same table every time; with repeats the samples must differ, so sampling is not seeded
if [[ "$EVAL_REPEATS" == 1 ]]; then determinism=true; else determinism=false; fi
cpu_eval=()
if [[ "$PLATFORM" == cpu && "$determinism" == true ]]; then
  # no batch-invariant kernels on a CPU: one sequence at a time and no prefix cache, so no sequence's numbers
  # depend on which others ran beside it
  cpu_eval=(actor_rollout_ref.rollout.max_num_seqs=1 actor_rollout_ref.rollout.enable_prefix_caching=false)
fi
EVAL_BATCH=${EVAL_BATCH:-$VAL_TASKS}  # tasks per validation batch (every task is played; this bounds memory)
RUN_NAME=${RUN_NAME:-$(model_run_name "$MODEL")}
RUN_DIR=$OUT_DIR/eval/$ENV/$(slug "$RUN_NAME")
EVAL_DIR=${EVAL_DIR:-$RUN_DIR/validation}
if [[ -f "$DATA_DIR/${ENV}_test.parquet" ]]; then
  split_file=${ENV}_test.parquet
  case "$ENV" in alfworld) split="valid_unseen ($split_file)" ;; *) split="test ($split_file)" ;; esac
else
  split_file=${ENV}_val.parquet
  case "$ENV" in alfworld) split="valid_seen ($split_file; no ${ENV}_test.parquet in DATA_DIR)" ;;
                 *) split="val ($split_file; no ${ENV}_test.parquet in DATA_DIR)" ;; esac
fi
RL_INIT=$MODEL RUN_DIR=$RUN_DIR run_verl "$ENV" \
  "data.val_files=$DATA_DIR/$split_file" "data.val_batch_size=$EVAL_BATCH" data.val_tasks=null \
  "actor_rollout_ref.rollout.val_kwargs.n=$EVAL_REPEATS" "actor_rollout_ref.rollout.full_determinism=$determinism" \
  ${cpu_eval[@]+"${cpu_eval[@]}"} \
  trainer.val_only=true trainer.resume_mode=disable "trainer.validation_data_dir=$EVAL_DIR" \
  "trainer.default_local_dir=$RUN_DIR/checkpoints" "trainer.experiment_name=${ENV}_eval_$(slug "$RUN_NAME")" "$@"
run_cmd "$PYTHON" -m recipe.spa.eval_table "$EVAL_DIR" --split "$split"
