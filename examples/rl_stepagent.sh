#!/usr/bin/env bash
# StepAgent (arXiv 2411.03817; no public code, our reading): each training episode starts from an expert prefix (the
# expert's first k actions replayed, mask 0), the policy acts at the expert's state and its action is compared with
# the expert's next one (inspection); the comparison becomes a reward (reflection), algorithm.reward=stepagent:
#   STEPAGENT_MODE=match     r = +-1 on the compared turn (matched the expert or not) + R on the last turn
#   STEPAGENT_MODE=implicit  a PRM (causal LM from the policy) trained by step-level DPO on (expert, agent) actions
#                            at the same state, r_t = beta * q_t on every policy turn (PRM_GPUS GPUs of its own)
#   STEPAGENT_MODE=irl       a discriminator D(s, a) (policy backbone + scalar head) trained by BCE on expert vs agent
#                            actions at the same states, r_t = clip(log D - log(1 - D)) (PRM_GPUS GPUs of its own)
# Default match: it needs no PRM, so it runs on the same GPUs as the GRPO/GiGPO baselines and isolates what
# inspection alone gives; implicit / irl add a second model and its GPU.
#   bash examples/rl_stepagent.sh <alfworld|webshop|virtualhome> [hydra overrides...]
# Needs the expert demonstrations: EXPERT=<parquet> (default $DATA_DIR/<env>_sft.parquet, from
# examples/prepare_data.sh). ADV=spa (turn-level advantage, default; STEPAGENT_CRITIC=1 adds a critic: turn-level
# GAE) or ADV=grpo (episode groups on the sum of the turn rewards). PREFIX=uniform|reverse (how k is drawn).
# The run folder carries the mode (reward slug stepagent-<mode>), so two modes never share (or resume) one folder.
source "$(dirname "$0")/common.sh"
check_env "${1:-}"; ENV=$1; shift
STEPAGENT_MODE=${STEPAGENT_MODE:-match}
case "$STEPAGENT_MODE" in match|implicit|irl) ;;
  *) echo "STEPAGENT_MODE=$STEPAGENT_MODE: use match, implicit or irl" >&2; exit 2 ;; esac
ADV=${ADV:-spa}
case "$ADV" in spa|grpo) ;; *) echo "ADV=$ADV: use spa or grpo" >&2; exit 2 ;; esac
EXPERT=${EXPERT:-$DATA_DIR/${ENV}_sft.parquet}
PREFIX=${PREFIX:-uniform}
MATCH_REWARD=${MATCH_REWARD:-1.0}
STEPAGENT_CRITIC=${STEPAGENT_CRITIC:-0}
if [[ "$STEPAGENT_CRITIC" == 1 && "$ADV" != spa ]]; then echo "STEPAGENT_CRITIC=1 needs ADV=spa (turn-level GAE)" >&2; exit 2; fi
if [[ "$STEPAGENT_MODE" == match ]]; then PRM_GPUS=0; else PRM_GPUS=${PRM_GPUS:-1}; fi
split_side_gpus PRM_GPUS
PRM_BETA=${PRM_BETA:-0.05}
PRM_LR=${PRM_LR:-1e-6}
PRM_LORA_R=${PRM_LORA_R:-0}
STEP_W=${STEP_W:-1.0}
prm=()
if [[ "$STEPAGENT_MODE" != match ]]; then
  prm=("algorithm.stepagent.beta=$PRM_BETA" "algorithm.stepagent.lr=$PRM_LR" "algorithm.stepagent.lora_r=$PRM_LORA_R"
       "algorithm.stepagent.num_gpus=$SIDE_GPUS")
fi
critic=()
if [[ "$STEPAGENT_CRITIC" == 1 ]]; then critic_overrides; critic=("${CRITIC_ARGS[@]}"); fi
run_rl "$ENV" stepagent \
  algorithm.reward=stepagent "algorithm.adv_estimator=$ADV" "algorithm.stepagent.mode=$STEPAGENT_MODE" \
  "algorithm.stepagent.expert_path=$EXPERT" "algorithm.stepagent.prefix=$PREFIX" \
  "algorithm.stepagent.match_reward=$MATCH_REWARD" "algorithm.spa.step_advantage_w=$STEP_W" \
  "algorithm.invalid_penalty=$INVALID_PENALTY" \
  ${prm[@]+"${prm[@]}"} ${critic[@]+"${critic[@]}"} "$@"
