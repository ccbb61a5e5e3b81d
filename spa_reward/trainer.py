"""The ``spa`` v1 trainer mode: verl's synchronous PPO trainer plus the per-turn inputs our estimators need.

verl 0.9.1's ``_compute_advantage`` hands a custom estimator only rewards, response_mask, uid and config. This mode
fetches the extra rollout fields the ``env_agent`` loop stores in TransferQueue (``turn_anchors``,
``episode_reward``, ``episode_info``; ``values`` when a critic runs) and exposes them to the estimators through
``spa_reward.advantage.estimator_inputs`` while verl's own advantage step runs unchanged (KL-in-reward, rollout
correction and the write-back stay verl's). It also logs episode metrics (success per task type, turns,
grounding) computed from the same fields. Select it with ``trainer.v1.trainer_mode=spa``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch

from spa_reward.advantage import estimator_inputs
from spa_reward.metrics import episode_metrics

logger = logging.getLogger(__name__)

TURN_ESTIMATORS = ("spa", "gigpo")  # estimators that read the extra per-turn fields


def column(data: Any, name: str) -> list:
    """A TransferQueue/TensorDict column as a plain Python list (tensor or non-tensor stack)."""
    value = data[name]
    if isinstance(value, torch.Tensor):
        if value.is_nested:
            return [t.tolist() for t in value.unbind()]
        return value.tolist()
    value = value.tolist() if hasattr(value, "tolist") else value
    return [list(v) if type(v).__name__ == "LinkedList" else v for v in value]


def _build_trainer_cls():
    import transfer_queue as tq
    from verl.trainer.ppo.v1 import register_trainer
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    @register_trainer("spa")
    class SpaTrainer(PPOTrainerSync):
        """Behaves exactly like ``sync`` (same replay buffer and weight sync), plus the per-turn estimator inputs."""

        def __init__(self, config):
            from spa_reward.config_check import validate_config

            validate_config(config)
            super().__init__(config)

        # verl branches on ``trainer_mode == "sync"`` in several places; this mode must take the sync branches.
        @property
        def trainer_mode(self) -> str:
            return "sync"

        @trainer_mode.setter
        def trainer_mode(self, value: str) -> None:
            if value not in ("spa", "sync"):
                raise ValueError(f"SpaTrainer runs as trainer.v1.trainer_mode=spa, got {value!r}")

        # ---- step-reward service (spa_reward.steprm.trainer_hooks; owner: steprm helper) ----
        def _start_services(self):
            """Start the scorer / step-reward service actor the run needs (idempotent)."""
            if getattr(self, "_steprm", None) is None:
                from spa_reward.steprm.trainer_hooks import StepRewardHooks

                self._steprm = StepRewardHooks(self.config, getattr(self, "tokenizer", None))
                self._steprm.start()
            return self._steprm

        def _load_checkpoint(self):
            steprm = self._start_services()
            super()._load_checkpoint()
            if self.global_steps > 0 and steprm.trains:
                mode = self.config.trainer.resume_mode
                step_dir = (self.config.trainer.resume_from_path if mode == "resume_path" else
                            os.path.join(os.path.abspath(self.config.trainer.default_local_dir),
                                         f"global_step_{self.global_steps}"))
                steprm.load(step_dir)

        def _save_checkpoint(self):
            steprm = getattr(self, "_steprm", None)
            if steprm is not None:  # before verl writes latest_checkpointed_iteration.txt
                steprm.save(os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}"))
            return super()._save_checkpoint()
        # ---- end step-reward service ----

        def _compute_advantage(self, batch, metrics: dict):
            steprm = getattr(self, "_steprm", None)
            if steprm is not None:  # istar: + beta*q_t on rm_scores (pre-update weights); online: one service update
                steprm.on_batch(batch, metrics)
            estimator = self.config.algorithm.adv_estimator
            fields = ["episode_info"]
            if estimator in TURN_ESTIMATORS:
                fields += ["turn_anchors", "episode_reward"]
            want_values = estimator == "spa" and self.use_critic
            if want_values:
                fields.append("values")
            data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
            missing = [f for f in fields if f not in data.keys()]
            if missing:
                raise RuntimeError(
                    f"trainer_mode=spa needs the rollout fields {missing}, which the env_agent agent loop writes "
                    "(dataset column agent_name=env_agent); this batch was produced by another agent loop."
                )
            infos = column(data, "episode_info")
            metrics.update(episode_metrics(infos))
            inputs = {}
            if estimator in TURN_ESTIMATORS:
                inputs["turn_anchors"] = np.array(column(data, "turn_anchors") + [None], dtype=object)[:-1]
                inputs["episode_rewards"] = np.asarray(column(data, "episode_reward"), dtype=np.float64)
            if want_values:
                inputs["values"] = data.to_padded_tensor()["values"] if hasattr(data, "to_padded_tensor") else data["values"]
            with estimator_inputs(**inputs):
                return super()._compute_advantage(batch, metrics)

    return SpaTrainer


SpaTrainer = _build_trainer_cls()
