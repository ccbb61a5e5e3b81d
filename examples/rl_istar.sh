#!/usr/bin/env bash
# iStar (arXiv 2509.19199): implicit step rewards r_t = beta * q_t from an online PRM (a causal LM initialised from
# the policy, trained by trajectory DPO on each batch), RLOO baselines at episode and step level
# (algorithm.reward=istar algorithm.adv_estimator=spa algorithm.spa.mode=rloo). No collection or estimator stage.
#   bash examples/rl_istar.sh <alfworld|webshop|virtualhome> [hydra overrides...]
# The PRM runs outside verl's resource pool: the trainer gets N_GPUS - PRM_GPUS GPUs per node, the PRM the rest
# (PRM_GPUS x NNODES; 2 or more: the PRM is sharded with FSDP2 over one rank per GPU, spa_reward/steprm/sharded.py).
# The authors' WebShop values: beta 0.05, PRM lr 1e-6, PRM grad clip 10, actor lr 5e-7 without KL loss; this script
# keeps the shared schedule of the other RL scripts (LR, KL_COEF) so the runs compare.
source "$(dirname "$0")/common.sh"
check_env "${1:-}"; ENV=$1; shift
PRM_GPUS=${PRM_GPUS:-1}
split_side_gpus PRM_GPUS
ISTAR_BETA=${ISTAR_BETA:-0.05}
PRM_LR=${PRM_LR:-1e-6}
PRM_LORA_R=${PRM_LORA_R:-0}
STEP_W=${STEP_W:-1.0}
run_rl "$ENV" istar \
  algorithm.reward=istar algorithm.adv_estimator=spa algorithm.spa.mode=rloo \
  "algorithm.spa.step_advantage_w=$STEP_W" "algorithm.invalid_penalty=$INVALID_PENALTY" \
  "algorithm.istar.beta=$ISTAR_BETA" "algorithm.istar.lr=$PRM_LR" "algorithm.istar.lora_r=$PRM_LORA_R" \
  "algorithm.istar.num_gpus=$SIDE_GPUS" "$@"
