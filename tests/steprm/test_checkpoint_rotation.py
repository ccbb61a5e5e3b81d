"""The step-reward state of a checkpoint (``global_step_N/steprm``) lives as long as verl keeps that checkpoint's
actor: verl's rotation (``trainer.max_actor_ckpt_to_keep``) deletes only the ``actor`` folders it registered."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from tests.steprm.test_restart import actor, columns, hooks_for


class RotatingActorGroup:
    """The actor worker group's ``save_checkpoint`` with verl's real rotation bookkeeping, called in the order
    ``FSDPCheckpointManager.save_checkpoint`` calls it (capacity before the save, register after)."""

    def __init__(self):
        from verl.utils.checkpoint.checkpoint_manager import BaseCheckpointManager

        self.manager = BaseCheckpointManager.__new__(BaseCheckpointManager)
        self.manager.previous_saved_paths = []

    def save_checkpoint(self, local_path, remote_path, global_steps, max_ckpt_to_keep=None):
        self.manager.ensure_checkpoint_capacity(max_ckpt_to_keep)
        os.makedirs(local_path, exist_ok=True)
        with open(os.path.join(local_path, "model.pt"), "w") as f:
            f.write(str(global_steps))
        self.manager.register_checkpoint(local_path, max_ckpt_to_keep)


def trainer_for(tmp_path, hooks, keep):
    from spa_reward.trainer import SpaTrainer

    trainer = SpaTrainer.__new__(SpaTrainer)  # the real class and verl's real _save_checkpoint, no GPU workers
    trainer.config = OmegaConf.create({
        "trainer": {"default_local_dir": str(tmp_path), "default_hdfs_dir": None, "max_actor_ckpt_to_keep": keep,
                    "max_critic_ckpt_to_keep": keep},
        "actor_rollout_ref": {"actor": {"checkpoint": {}}},
    })
    trainer.use_critic = False
    trainer.actor_rollout_wg = RotatingActorGroup()
    trainer.train_dataloader = SimpleNamespace(state_dict=lambda: {"position": 0})
    trainer.checkpoint_callback = SimpleNamespace(on_save=lambda **kw: None)
    trainer._steprm = hooks
    return trainer


@pytest.mark.parametrize("keep", [2, None])
def test_steprm_states_rotate_with_verls_actor_checkpoints(tmp_path, monkeypatch, keep):
    hooks = hooks_for(None, tmp_path)
    hooks.handle = actor(hooks, monkeypatch)
    trainer = trainer_for(tmp_path, hooks, keep)
    for step in range(1, 5):
        hooks.process(columns(step), {})
        trainer.global_steps = step
        trainer._save_checkpoint()
    kept = [s for s in range(1, 5) if (tmp_path / f"global_step_{s}" / "actor").is_dir()]
    states = [s for s in range(1, 5) if (tmp_path / f"global_step_{s}" / "steprm").is_dir()]
    assert kept == ([3, 4] if keep == 2 else [1, 2, 3, 4])  # verl's rotation
    assert states == kept  # ours follows it
    assert (tmp_path / "global_step_1" / "data.pt").is_file()  # verl leaves the rest of the folder
    pointer = json.loads((tmp_path / "steprm_latest" / "LATEST.json").read_text())
    assert pointer["state"] == "../global_step_4/steprm" and pointer["version"] == 4
    # a restart of the service actor now restores from the newest checkpoint
    restarted = actor(hooks, monkeypatch, restarted=True)
    assert restarted.identity()["version"] == 4 and restarted.identity()["not_restored"] is None


def test_prune_keeps_the_current_step_and_folders_without_a_state(tmp_path):
    from spa_reward.steprm.trainer_hooks import prune_rotated_states

    for name in ("global_step_1/steprm", "global_step_2/steprm", "global_step_2/actor", "global_step_3/steprm",
                 "global_step_x/steprm", "other/steprm"):
        (tmp_path / name).mkdir(parents=True)
    assert prune_rotated_states(tmp_path, current_step=3) == [str(tmp_path / "global_step_1" / "steprm")]
    assert (tmp_path / "global_step_3" / "steprm").is_dir()  # the checkpoint being written now
    assert prune_rotated_states(tmp_path / "missing", 3) == []
