"""The progress estimator's objectives (sum, prefix, prefix_sum): readout positions, c_t and losses against
hand-computed values, the prefix objective's telescoping (hypothesis), both layouts, and the online service."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from spa_reward.steprm import objectives as obj


def test_readout_positions_read_the_prompt_end_first_for_prefix_only():
    ends = torch.tensor([[5, 9, -1], [3, -1, -1], [-1, -1, -1]])
    start = torch.tensor([2, 1, 0])
    assert obj.readout_positions(ends, start, "sum").tolist() == ends.tolist()
    assert obj.readout_positions(ends, start, "prefix_sum").tolist() == ends.tolist()
    # a row without turns reads nothing, not even its prompt
    assert obj.readout_positions(ends, start, "prefix").tolist() == [[2, 5, 9, -1], [1, 3, -1, -1], [-1, -1, -1, -1]]
    with pytest.raises(ValueError, match="not one of"):
        obj.readout_positions(ends, start, "prefixx")


def test_contributions_from_readouts_hand_computed():
    valid = torch.tensor([[True, True, True], [True, False, False]])
    # prefix: readouts V_0..V_K, c_t = V_{t+1} - V_t
    v = torch.tensor([[0.2, 0.5, 0.4, 1.0], [0.3, 0.1, 7.0, 7.0]])
    assert obj.contributions_from_readouts(v, valid, "prefix").tolist() == [
        pytest.approx([0.3, -0.1, 0.6]), pytest.approx([-0.2, 0.0, 0.0])]
    # prefix_sum: readouts V_1..V_K with V_0 = 0
    v1 = torch.tensor([[0.5, 0.4, 1.0], [0.1, 7.0, 7.0]])
    assert obj.contributions_from_readouts(v1, valid, "prefix_sum").tolist() == [
        pytest.approx([0.5, -0.1, 0.6]), pytest.approx([0.1, 0.0, 0.0])]
    # sum: the readouts are the c_t
    assert obj.contributions_from_readouts(v1, valid, "sum").tolist() == [
        pytest.approx([0.5, 0.4, 1.0]), pytest.approx([0.1, 0.0, 0.0])]


def test_episode_losses_hand_computed():
    valid = torch.tensor([[True, True], [True, False]])
    rewards = torch.tensor([1.0, 0.0])
    # sum: (sum_t c_t - R)^2 = (0.5 + 0.25 - 1)^2, (0.5 - 0)^2
    c = torch.tensor([[0.5, 0.25], [0.5, 9.0]])
    assert obj.progress_episode_losses(c, valid, rewards, "sum").tolist() == pytest.approx([0.0625, 0.25])
    # prefix: mean over the readouts (start + turns) of (V - R)^2
    v = torch.tensor([[0.5, 0.0, 1.0], [0.2, 0.4, 9.0]])
    assert obj.progress_episode_losses(v, valid, rewards, "prefix").tolist() == pytest.approx(
        [(0.25 + 1.0 + 0.0) / 3, (0.04 + 0.16) / 2])
    # prefix_sum: mean over the turn readouts of (V - R)^2, plus (sum_t c_t - R)^2 = (V_T - R)^2
    v1 = torch.tensor([[0.0, 0.5], [0.4, 9.0]])
    assert obj.progress_episode_losses(v1, valid, rewards, "prefix_sum").tolist() == pytest.approx(
        [(1.0 + 0.25) / 2 + 0.25, 0.16 + 0.16])
    # the batch loss the service trains with is the mean of these; sum keeps the paper's progress_loss
    assert float(obj.progress_loss(c, valid, rewards)) == pytest.approx((0.0625 + 0.25) / 2)


def test_window_episodes_pool_their_rows_readouts():
    """Window layout: each row is (prompt end, reply end); an episode's loss averages over all its rows' readouts,
    and its sum term adds the c_t of all its rows."""
    v = torch.tensor([[0.1, 0.3], [0.3, 0.9], [0.0, 0.2]])  # rows 0, 1: episode 0 (R 1); row 2: episode 1 (R 0)
    valid = torch.ones(3, 1, dtype=torch.bool)
    index = torch.tensor([0, 0, 1])
    rewards = torch.tensor([1.0, 0.0])
    losses = obj.progress_episode_losses(v, valid, rewards, "prefix", episode_index=index)
    assert losses.tolist() == pytest.approx([(0.81 + 0.49 + 0.49 + 0.01) / 4, (0.0 + 0.04) / 2])
    c = obj.contributions_from_readouts(v, valid, "prefix")
    assert c[:, 0].tolist() == pytest.approx([0.2, 0.6, 0.2])
    sums = obj.progress_episode_losses(c, valid, rewards, "sum", episode_index=index)
    assert sums.tolist() == pytest.approx([(0.8 - 1.0) ** 2, 0.2 ** 2])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=2, max_size=9), min_size=1,
                max_size=6))
def test_prefix_contributions_telescope_to_end_minus_start(rows):
    """For any readouts V_0..V_T: sum_t c_t = V_T - V_0 (prefix) and = V_T (prefix_sum, V_0 = 0)."""
    width = max(len(r) for r in rows)
    v = torch.tensor([r + [0.0] * (width - len(r)) for r in rows], dtype=torch.float64)
    turns = torch.tensor([len(r) - 1 for r in rows])
    valid = torch.arange(width - 1).unsqueeze(0) < turns.unsqueeze(1)
    c = obj.contributions_from_readouts(v, valid, "prefix")
    last = torch.tensor([r[-1] for r in rows], dtype=torch.float64)
    first = torch.tensor([r[0] for r in rows], dtype=torch.float64)
    torch.testing.assert_close(c.double().sum(1), (last - first).float().double(), rtol=1e-5, atol=1e-4)
    c1 = obj.contributions_from_readouts(v[:, 1:], valid, "prefix_sum")
    torch.testing.assert_close(c1.double().sum(1), last.float().double(), rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------------------- the online service

def _service(loss, **kw):
    from spa_reward.steprm.service import StepRewardModel
    from tests.steprm.helpers import tiny_backbone

    torch.manual_seed(0)
    return StepRewardModel({**dict(objective="progress", loss=loss, online=True, backbone_config=tiny_backbone(
        vocab_size=20), head="linear", lr=1e-2, micro_batch_size=2, device="cpu"), **kw})


def _items():
    # two packed episodes: prompt 3 tokens; turns end at 4, 7 / 5
    return [{"input_ids": [1, 2, 3, 4, 5, 6, 7, 8], "prompt_length": 3, "turn_spans": [[3, 5], [6, 8]], "reward": 1.0},
            {"input_ids": [2, 3, 9, 8, 7, 6], "prompt_length": 3, "turn_spans": [[3, 6]], "reward": 0.0}]


def _head(svc, ids, positions):
    with torch.no_grad():
        return svc.serving(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long),
                           torch.tensor([positions]))[0].tolist()


def test_service_scores_and_trains_the_prefix_objective():
    svc = _service("prefix")
    items = _items()
    v0 = _head(svc, items[0]["input_ids"], [2, 4, 7])  # V at the prompt's last token and each turn's last token
    v1 = _head(svc, items[1]["input_ids"], [2, 5])
    scored = svc.score(items)
    assert scored[0] == pytest.approx([v0[1] - v0[0], v0[2] - v0[1]], abs=1e-6)
    assert scored[1] == pytest.approx([v1[1] - v1[0]], abs=1e-6)
    hand = (sum((v - 1.0) ** 2 for v in v0) / 3 + sum(v ** 2 for v in v1) / 2) / 2
    m = svc.update(items)
    assert m["steprm/loss_first"] == pytest.approx(hand, abs=1e-5)
    with pytest.raises(ValueError, match="item 0 has no prompt_length"):
        svc.score([{"input_ids": [1, 2, 3], "turn_spans": [[1, 3]]}])


def test_service_prefix_on_window_rows_pools_the_episode_and_prefix_sum_refuses():
    svc = _service("prefix")
    rows = [{"input_ids": [1, 2, 3, 4], "prompt_length": 2, "turn_spans": [[2, 4]], "reward": 1.0, "episode": "a"},
            {"input_ids": [5, 6, 7], "prompt_length": 1, "turn_spans": [[1, 3]], "reward": 1.0, "episode": "a"},
            {"input_ids": [8, 9, 1, 2], "prompt_length": 3, "turn_spans": [[3, 4]], "reward": 0.0, "episode": "b"}]
    v = [_head(svc, r["input_ids"], [r["prompt_length"] - 1, r["turn_spans"][0][1] - 1]) for r in rows]
    assert [s[0] for s in svc.score(rows)] == pytest.approx([x[1] - x[0] for x in v], abs=1e-6)
    hand = (sum((x - 1.0) ** 2 for x in v[0] + v[1]) / 4 + sum(x ** 2 for x in v[2]) / 2) / 2
    assert svc.update(rows)["steprm/loss_first"] == pytest.approx(hand, abs=1e-5)
    with pytest.raises(ValueError, match="prefix_sum objective needs the full layout"):
        _service("prefix_sum").update(rows)


def test_service_loss_must_match_the_estimator_and_mse_is_the_old_name_of_sum(tmp_path):
    from spa_reward.progress.model import ProgressEstimator, ProgressEstimatorConfig
    from spa_reward.steprm.service import StepRewardModel, StepRMSettings
    from tests.steprm.helpers import tiny_backbone

    assert StepRMSettings(objective="progress", loss="mse", backbone_config={}).loss == "sum"
    ProgressEstimator(ProgressEstimatorConfig(backbone_config=tiny_backbone(vocab_size=20), objective="prefix")
                      ).save_pretrained(tmp_path / "est")
    with pytest.raises(ValueError, match="trained with the 'prefix' objective, this service trains 'sum'"):
        StepRewardModel(dict(objective="progress", loss="sum", model_path=str(tmp_path / "est"), device="cpu"))
    svc = StepRewardModel(dict(objective="progress", loss="prefix", model_path=str(tmp_path / "est"), device="cpu"))
    assert svc.settings.loss == "prefix"
