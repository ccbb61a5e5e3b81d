"""StepAgent implicit / irl through the trainer hooks: the PRM reward lands on every policy turn's last token (never
on the replayed expert prefix, mask 0), scored with the pre-update weights; the batch's unmatched compared turns
become the training pairs; save/load resumes identically; the TransferQueue glue reads the ``stepagent`` field."""

from __future__ import annotations

import pytest
import torch

from spa_reward.steprm.service import StepRewardModel
from spa_reward.steprm.trainer_hooks import StepRewardHooks, episode_items, stepagent_pairs
from tests.recipe.helpers import trainer_config
from tests.steprm.helpers import tiny_backbone

# prompt 3 tokens. Row 0: expert prefix turn (4 5 6, mask 0), compared turn 7 8, observation 9, turn 10 11.
# Row 1: prefix 4 5, compared turn 7 8 (matched the expert). Row 2: a task without a demonstration (k = 0).
# Row 3: like row 0, but the env failed.
PROMPTS = [torch.tensor([1, 2, 3])] * 4
RESPONSES = [torch.tensor([4, 5, 6, 7, 8, 9, 10, 11]), torch.tensor([4, 5, 7, 8]), torch.tensor([7, 8, 9]),
             torch.tensor([4, 5, 6, 7, 8, 9, 10, 11])]
MASKS = [torch.tensor([0, 0, 0, 1, 1, 0, 1, 1]), torch.tensor([0, 0, 1, 1]), torch.tensor([1, 1, 1]),
         torch.tensor([0, 0, 0, 1, 1, 0, 1, 1])]
BASE = [torch.tensor([0.0, 0.0, 0.0, 0.0, 0.7, 0.0, 0.0, 0.1]), torch.tensor([0.0, 0.0, 0.0, -0.2]),
        torch.tensor([0.0, 0.0, 0.3]), torch.zeros(8)]
# where each row's turn rewards go (response coordinates: each policy turn's last token)
TURN_ENDS = [[4, 7], [3], [2], [4, 7]]


def sa(compared, match, context_length, expert=(12, 13)):
    return {"prefix_turns": 1, "expert_turns": 4, "compared": compared, "expert_action": "a", "agent_action": "b",
            "match": match, "match_by": "action" if match else "", "context_length": context_length,
            "expert_reply_ids": list(expert) if compared else []}


def columns(responses=RESPONSES):
    return {"prompts": PROMPTS, "responses": responses, "response_mask": MASKS, "uid": ["u0", "u0", "u1", "u0"],
            "episode_info": [{"won": True}, {"won": False}, {"won": False}, {"won": False, "env_failed": True}],
            "episode_reward": [1.0, 0.0, 0.0, 0.0], "rm_scores": [b.clone() for b in BASE],
            "stepagent": [sa(True, False, 6), sa(True, True, 5), sa(False, False, 0), sa(True, False, 6)]}


WARM_UP = {"input_ids": [1, 2, 3, 4], "expert_ids": [7, 8, 9], "agent_ids": [10, 11]}


def service(mode: str) -> StepRewardModel:
    """A PRM after one warm-up update (an implicit PRM with a frozen reference starts at q = 0 everywhere)."""
    torch.manual_seed(0)
    common = dict(online=True, backbone_config=tiny_backbone(vocab_size=20), lr=1e-2, device="cpu")
    if mode == "implicit":
        svc = StepRewardModel(dict(objective="implicit", loss="step_dpo", reference="frozen", beta=0.5, **common))
    else:
        svc = StepRewardModel(dict(objective="discriminator", loss="bce", head="linear", reward_clip=5.0, **common))
    svc.update([WARM_UP])
    return svc


def hooks(mode: str, svc=None, prm_turns: str = "all") -> StepRewardHooks:
    cfg = trainer_config("algorithm.reward=stepagent", f"algorithm.stepagent.mode={mode}",
                         "algorithm.stepagent.expert_path=/x/e.parquet", "algorithm.adv_estimator=spa",
                         f"algorithm.stepagent.prm_turns={prm_turns}")
    return StepRewardHooks(cfg, service=svc if svc is not None else service(mode))


EXPECTED_PAIR = {"input_ids": [1, 2, 3, 4, 5, 6], "expert_ids": [12, 13], "agent_ids": [7, 8], "prompt_length": 3,
                 "uid": "u0"}


def test_pairs_from_the_unmatched_compared_turns():
    c = columns()
    items, trainable = episode_items(c["prompts"], c["responses"], c["response_mask"], c["uid"], c["episode_info"],
                                     c["episode_reward"])
    assert items[0]["turn_spans"] == [[6, 8], [9, 11]]  # the prefix turn (mask 0) is no turn
    pairs, counts = stepagent_pairs(items, trainable, c["stepagent"])
    assert pairs == [EXPECTED_PAIR]
    assert counts == {"stepagent/compared": 2.0, "stepagent/matched": 1.0, "stepagent/pairs": 1.0,
                      "stepagent/bad_rows": 0.0}
    # window layout: only the episode's step-0 row holds the compared turn
    pairs, counts = stepagent_pairs(items, trainable, c["stepagent"], step_index=[1, 0, 0, 0])
    assert pairs == [] and counts["stepagent/compared"] == 1.0
    # a context_length past the row, or no expert reply: left out and counted
    bad = [sa(True, False, 99), sa(True, False, 5, expert=()), None, None]
    pairs, counts = stepagent_pairs(items, trainable, bad)
    assert pairs == [] and counts["stepagent/bad_rows"] == 2.0


@pytest.mark.parametrize("mode", ["implicit", "irl"])
def test_prm_reward_on_every_policy_turn_never_on_the_prefix(mode):
    h = hooks(mode)
    svc = h.handle
    assert h.trains and h.scores_turns and h.stepagent and not h.implicit
    assert h.plan["kind"] == f"stepagent_{mode}"
    c = columns()
    items, _ = episode_items(c["prompts"], c["responses"], c["response_mask"], c["uid"], c["episode_info"],
                             c["episode_reward"])
    r = svc.score(items)  # the weights before this batch's update
    assert all(len(x) == len(e) for x, e in zip(r, TURN_ENDS)) and any(abs(v) > 0 for x in r for v in x)
    metrics: dict = {}
    new = h.process(c, metrics)
    for row, (scores, base, ends) in enumerate(zip(new, BASE, TURN_ENDS)):
        expected = base.clone()
        for t, pos in enumerate(ends):
            expected[pos] += r[row][t]
        assert scores.tolist() == pytest.approx(expected.tolist(), abs=1e-6)
        prefix = int((MASKS[row].cumsum(0) == 0).sum())  # the leading mask-0 tokens: the expert's prefix turn
        assert scores[:prefix].tolist() == base[:prefix].tolist()
    assert metrics["stepagent/pairs"] == 1.0 and metrics["stepagent/matched"] == 1.0 and svc.version == 2
    assert metrics["steprm/skipped_episodes"] == 1.0 and metrics["steprm/pairs"] == 1.0
    # the update trained on exactly the expected pair
    ref = service(mode)
    ref.update([EXPECTED_PAIR])
    assert ref.score(items) == svc.score(items) and svc.score(items) != r


@pytest.mark.parametrize("mode", ["implicit", "irl"])
def test_prm_reward_on_the_compared_turn_only_by_default(mode):
    """prm_turns=compared (the default): the model's reward lands on the compared turn of each compared row (the
    turn that starts at context_length) and nowhere else; rows without a comparison keep their rm_scores."""
    from spa_reward.steprm.trainer_hooks import compared_turns

    h = hooks(mode, prm_turns="compared")
    c = columns()
    items, _ = episode_items(c["prompts"], c["responses"], c["response_mask"], c["uid"], c["episode_info"],
                             c["episode_reward"])
    keep = compared_turns(items, c["stepagent"])
    assert keep == [[True, False], [True], [False], [True, False]]
    assert compared_turns(items, c["stepagent"], step_index=[1, 0, 0, 0])[0] == [False, False]
    r = h.handle.score(items)
    new = h.process(c, {})
    for row, (scores, base, ends) in enumerate(zip(new, BASE, TURN_ENDS)):
        expected = base.clone()
        for t, pos in enumerate(ends):
            if keep[row][t]:
                expected[pos] += r[row][t]
        assert scores.tolist() == pytest.approx(expected.tolist(), abs=1e-6)


def test_no_pair_no_update_and_a_missing_field_is_named():
    h = hooks("irl")
    c = columns()
    c["stepagent"] = [sa(True, True, 6), sa(True, True, 5), sa(False, False, 0), sa(True, True, 6)]
    metrics: dict = {}
    h.process(c, metrics)
    assert h.handle.version == 1 and metrics["stepagent/pairs"] == 0.0 and "steprm/loss" not in metrics
    del c["stepagent"]
    with pytest.raises(RuntimeError, match="'stepagent' field"):
        h.process(c, {})


@pytest.mark.parametrize("mode", ["implicit", "irl"])
def test_save_load_resumes_identically(mode, tmp_path):
    a = hooks(mode)
    a.process(columns(), {})
    a.save(tmp_path / "global_step_1")
    assert (tmp_path / "global_step_1" / "steprm" / "weights.safetensors").is_file()
    b = hooks(mode)
    b.load(tmp_path / "global_step_1")
    assert b.handle.version == 2
    later = columns([torch.tensor([4, 5, 6, 9, 8, 9, 10, 11]), torch.tensor([4, 5, 7, 8]), torch.tensor([7, 8, 9]),
                     torch.tensor([4, 5, 6, 7, 8, 9, 10, 11])])  # the agent acted otherwise at row 0's state
    ma, mb = {}, {}
    ra, rb = a.process(later, ma), b.process(later, mb)
    ma, mb = ({k: v for k, v in m.items() if not k.startswith("timing_s/")} for m in (ma, mb))  # wall seconds
    assert [x.tolist() for x in ra] == [x.tolist() for x in rb] and ma == mb and ma["steprm/version"] == 3.0
    items, _ = episode_items(PROMPTS, later["responses"], MASKS, later["uid"], later["episode_info"],
                             later["episode_reward"])
    assert a.handle.score(items) == b.handle.score(items)
    wrong = StepRewardHooks(trainer_config("algorithm.reward=istar"), service=StepRewardModel(dict(
        objective="implicit", online=True, backbone_config=tiny_backbone(vocab_size=20), device="cpu",
        reference="frozen")))
    with pytest.raises(ValueError, match="trained with 'step_dpo'|trained with 'bce'|holds a 'discriminator'"):
        wrong.load(tmp_path / "global_step_1")


def test_on_batch_reads_the_stepagent_field_through_transfer_queue(transfer_queue):
    """verl's TransferQueue round trip: the rows as the agent loop stores them (with ``stepagent``), rm_scores
    written back; one-row sessions (keys ``{uid}_{session}_0``)."""
    tq = transfer_queue
    from transfer_queue import KVBatchMeta
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    c = columns()
    names = ["prompts", "responses", "response_mask", "rm_scores", "uid", "episode_info", "episode_reward",
             "stepagent"]
    rows = [{n: c[n][i] for n in names} for i in range(4)]
    keys = [f"u{i}_{i}_0" for i in range(4)]
    tq.kv_batch_put(keys=keys, fields=list_of_dict_to_tensordict(rows), partition_id="train")
    h = hooks("irl")
    items, _ = episode_items(c["prompts"], c["responses"], c["response_mask"], c["uid"], c["episode_info"],
                             c["episode_reward"])
    r = h.handle.score(items)
    metrics: dict = {}
    h.on_batch(KVBatchMeta(keys=keys, tags=[{}] * 4, partition_id="train"), metrics)
    got = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=["rm_scores"])["rm_scores"]
    assert got[0].tolist() == pytest.approx([0, 0, 0, 0, 0.7 + r[0][0], 0, 0, 0.1 + r[0][1]], abs=1e-6)
    assert got[2].tolist() == pytest.approx([0.0, 0.0, 0.3 + r[2][0]], abs=1e-6)
    assert metrics["stepagent/pairs"] == 1.0 and h.handle.version == 2
