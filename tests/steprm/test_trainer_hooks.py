"""The trainer side of the step-reward service: items from rollout rows, beta * q_t on rm_scores (pre-update
weights), one update per batch without env-failed episodes, config plans and checks, TransferQueue glue."""

from __future__ import annotations

import pytest
import torch

from spa_reward.config_check import config_problems
from spa_reward.steprm.service import StepRewardModel
from spa_reward.steprm.trainer_hooks import StepRewardHooks, add_step_rewards, episode_items, service_plan
from tests.recipe.helpers import trainer_config
from tests.steprm.helpers import tiny_backbone

# two rows: prompt 3 tokens; response mask 1 1 0 1 (2 turns) and 1 1 1 (1 turn)
PROMPTS = [torch.tensor([1, 2, 3]), torch.tensor([1, 2, 4])]
RESPONSES = [torch.tensor([10, 11, 12, 13]), torch.tensor([14, 15, 16])]
MASKS = [torch.tensor([1, 1, 0, 1]), torch.tensor([1, 1, 1])]
OLD_LP = [torch.tensor([-1.0, -2.0, 0.0, -0.5]), torch.tensor([-0.1, -0.2, -0.3])]


def columns(infos=None):
    infos = infos or [{"won": True}, {"won": False}]
    return {"prompts": PROMPTS, "responses": RESPONSES, "response_mask": MASKS, "uid": ["u", "u"],
            "episode_info": infos, "episode_reward": [10.0, 0.0], "old_log_probs": OLD_LP,
            "rm_scores": [torch.tensor([0.0, 0.3, 0.0, 0.3]), torch.tensor([0.0, 0.0, -0.1])]}


def test_episode_items_and_placement():
    c = columns([{"won": True}, {"won": False, "env_error": "timeout"}])
    items, trainable = episode_items(c["prompts"], c["responses"], c["response_mask"], c["uid"], c["episode_info"],
                                     c["episode_reward"], OLD_LP, reward_scale=10.0)
    assert items[0]["input_ids"] == [1, 2, 3, 10, 11, 12, 13] and items[0]["turn_spans"] == [[3, 5], [6, 7]]
    assert items[1]["turn_spans"] == [[3, 6]] and items[0]["prompt_length"] == 3
    assert items[0]["ref_logprobs"] == [0.0, 0.0, 0.0, -1.0, -2.0, 0.0, -0.5]
    assert items[0]["success"] and not items[1]["success"] and items[0]["reward"] == 1.0  # R / reward_scale
    assert trainable == [True, False]  # the env failed in row 1: not training data
    new = add_step_rewards(c["rm_scores"], items, [[1.0, 2.0], [5.0]])
    assert new[0].tolist() == pytest.approx([0.0, 1.3, 0.0, 2.3]) and new[1].tolist() == pytest.approx([0.0, 0.0, 4.9])


def implicit_service():
    torch.manual_seed(0)
    return StepRewardModel(dict(objective="implicit", online=True, backbone_config=tiny_backbone(vocab_size=20),
                                lr=1e-2, beta=0.5, device="cpu"))


def test_process_scores_before_the_update_and_skips_failed_episodes():
    svc = implicit_service()
    hooks = StepRewardHooks(trainer_config("algorithm.reward=istar"), service=svc)
    assert hooks.implicit and hooks.trains
    c = columns()
    items, _ = episode_items(c["prompts"], c["responses"], c["response_mask"], c["uid"], c["episode_info"],
                             c["episode_reward"], OLD_LP)
    expected_r = svc.score(items)  # weights before this batch's update
    metrics: dict = {}
    new = hooks.process(c, metrics)
    assert new[0].tolist() == pytest.approx([0.0, 0.3 + expected_r[0][0], 0.0, 0.3 + expected_r[0][1]], abs=1e-6)
    assert new[1].tolist() == pytest.approx([0.0, 0.0, -0.1 + expected_r[1][0]], abs=1e-6)
    assert svc.version == 1 and metrics["steprm/pairs"] == 1.0 and metrics["steprm/skipped_episodes"] == 0.0
    assert svc.score(items) != expected_r  # the update changed the PRM (for the next batch)
    failed = columns([{"won": True}, {"won": False, "env_failed": True}])
    metrics = {}
    hooks.process(failed, metrics)
    assert metrics["steprm/skipped_episodes"] == 1.0 and metrics["steprm/episodes"] == 1.0


def test_plans_and_config_checks(tmp_path):
    plan = service_plan(trainer_config("algorithm.reward=istar", "actor_rollout_ref.model.path=/models/policy"))
    assert plan["kind"] == "implicit" and plan["settings"]["model_path"] == "/models/policy"
    assert plan["settings"]["beta"] == 0.05 and plan["settings"]["lr"] == 1e-6 and plan["settings"]["grad_clip"] == 10
    assert plan["settings"]["reference"] == "rollout" and plan["num_gpus"] == 1
    assert service_plan(trainer_config("algorithm.reward=outcome")) is None
    frozen = service_plan(trainer_config("algorithm.reward=spa", "algorithm.spa.estimator_path=/est"))
    assert frozen["kind"] == "progress_frozen" and frozen["name"] == "spa_progress_scorer"
    online = service_plan(trainer_config("algorithm.reward=spa", "algorithm.spa.estimator_path=/est",
                                         "algorithm.spa.online.enable=true", "algorithm.spa.online.replay_batches=3"))
    assert online["kind"] == "progress_online" and online["settings"]["replay_batches"] == 3
    assert online["settings"]["model_path"] == "/est" and online["name"] == "spa_progress_scorer"
    ok = trainer_config("algorithm.reward=istar", "algorithm.adv_estimator=spa")
    assert config_problems(ok, check_files=False) == []
    bad = trainer_config("algorithm.reward=istar", "algorithm.istar.lr=-1", "algorithm.istar.reference=policy")
    problems = " ".join(config_problems(bad, check_files=False))
    assert "algorithm.istar" in problems and "lr=-1.0 must be" in problems and "reference='policy'" in problems


def test_hooks_save_load_and_a_resume_without_state(tmp_path):
    svc = implicit_service()
    hooks = StepRewardHooks(trainer_config("algorithm.reward=istar"), service=svc)
    hooks.process(columns(), {})
    hooks.save(tmp_path / "global_step_1")
    assert (tmp_path / "global_step_1" / "steprm" / "weights.safetensors").is_file()
    other = StepRewardHooks(trainer_config("algorithm.reward=istar"), service=implicit_service())
    other.load(tmp_path / "global_step_1")
    assert other.handle.version == 1
    with pytest.raises(FileNotFoundError, match="resume_mode=disable"):
        other.load(tmp_path / "global_step_2")


def test_on_batch_through_transfer_queue():
    """verl's TransferQueue round trip: the rows as the agent loop stores them, rm_scores written back."""
    ray = pytest.importorskip("ray")
    tq = pytest.importorskip("transfer_queue")
    from omegaconf import OmegaConf
    from transfer_queue import KVBatchMeta
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
    try:
        c = columns()
        rows = [{"prompts": c["prompts"][i], "responses": c["responses"][i], "response_mask": c["response_mask"][i],
                 "old_log_probs": OLD_LP[i], "rm_scores": c["rm_scores"][i], "uid": c["uid"][i],
                 "episode_info": c["episode_info"][i], "episode_reward": c["episode_reward"][i]} for i in range(2)]
        keys = ["u_0_0", "u_1_0"]
        tq.kv_batch_put(keys=keys, fields=list_of_dict_to_tensordict(rows), partition_id="train")
        svc = implicit_service()
        items, _ = episode_items(c["prompts"], c["responses"], c["response_mask"], c["uid"], c["episode_info"],
                                 c["episode_reward"], OLD_LP)
        r = svc.score(items)
        hooks = StepRewardHooks(trainer_config("algorithm.reward=istar"), service=svc)
        metrics: dict = {}
        hooks.on_batch(KVBatchMeta(keys=keys, tags=[{}, {}], partition_id="train"), metrics)
        got = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=["rm_scores"])["rm_scores"]
        assert got[0].tolist() == pytest.approx([0.0, 0.3 + r[0][0], 0.0, 0.3 + r[0][1]], abs=1e-6)
        assert got[1].tolist() == pytest.approx([0.0, 0.0, -0.1 + r[1][0]], abs=1e-6)
        assert svc.version == 1 and "steprm/loss" in metrics
    finally:
        tq.close()
        ray.shutdown()
