"""The progress estimator's objectives (sum, prefix, prefix_sum): readout positions, c_t and losses against
hand-computed values, the prefix objective's telescoping (hypothesis), both layouts, and the online service."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from spa_reward.steprm import objectives as obj


def test_readout_positions_are_turn_ends_for_sum_and_befores_for_prefix():
    ends = torch.tensor([[5, 9, -1], [3, -1, -1]])
    before = torch.tensor([[2, 7, -1], [1, -1, -1]])
    assert obj.readout_positions(ends, before, "sum").tolist() == ends.tolist()
    assert obj.readout_positions(ends, before, "prefix").tolist() == before.tolist()
    with pytest.raises(ValueError, match="not one of"):
        obj.readout_positions(ends, before, "prefixx")


def test_contributions_from_readouts_hand_computed():
    valid = torch.tensor([[True, True, True], [True, False, False]])
    rewards = torch.tensor([1.0, 0.0])
    # prefix: readouts V_0..V_{T-1}, V_T = R, c_t = V_{t+1} - V_t
    v = torch.tensor([[0.2, 0.5, 0.4], [0.3, 7.0, 7.0]])
    assert obj.contributions_from_readouts(v, valid, "prefix", rewards).tolist() == [
        pytest.approx([0.3, -0.1, 0.6]), pytest.approx([-0.3, 0.0, 0.0])]
    # sum: the readouts are the c_t
    assert obj.contributions_from_readouts(v, valid, "sum").tolist() == [
        pytest.approx([0.2, 0.5, 0.4]), pytest.approx([0.3, 0.0, 0.0])]
    with pytest.raises(ValueError, match="needs each episode's R"):
        obj.contributions_from_readouts(v, valid, "prefix")


def test_episode_losses_hand_computed():
    valid = torch.tensor([[True, True], [True, False]])
    rewards = torch.tensor([1.0, 0.0])
    # sum: (sum_t c_t - R)^2 = (0.5 + 0.25 - 1)^2, (0.5 - 0)^2
    c = torch.tensor([[0.5, 0.25], [0.5, 9.0]])
    assert obj.progress_episode_losses(c, valid, rewards, "sum").tolist() == pytest.approx([0.0625, 0.25])
    # prefix: mean over the episode's readouts of (V_t - R)^2
    v = torch.tensor([[0.5, 0.0], [0.2, 9.0]])
    assert obj.progress_episode_losses(v, valid, rewards, "prefix").tolist() == pytest.approx([(0.25 + 1.0) / 2, 0.04])
    # the batch loss the service trains with is the mean of these; sum keeps the paper's progress_loss
    assert float(obj.progress_loss(c, valid, rewards)) == pytest.approx((0.0625 + 0.25) / 2)


def test_window_episodes_chain_their_rows():
    """Window layout (one readout per row, an episode's rows consecutive in step order): the value after a row's
    step is the next row's readout, R after the last row; the loss averages over all the episode's readouts."""
    v = torch.tensor([[0.1], [0.3], [0.2]])  # rows 0, 1: episode 0 (R 1); row 2: episode 1 (R 0)
    valid = torch.ones(3, 1, dtype=torch.bool)
    index = torch.tensor([0, 0, 1])
    rewards = torch.tensor([1.0, 0.0])
    c = obj.contributions_from_readouts(v, valid, "prefix", rewards, index)
    assert c[:, 0].tolist() == pytest.approx([0.2, 0.7, -0.2])
    losses = obj.progress_episode_losses(v, valid, rewards, "prefix", episode_index=index)
    assert losses.tolist() == pytest.approx([(0.81 + 0.49) / 2, 0.04])
    sums = obj.progress_episode_losses(v, valid, rewards, "sum", episode_index=index)
    assert sums.tolist() == pytest.approx([(0.4 - 1.0) ** 2, 0.2 ** 2])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=1, max_size=8),
                          st.floats(-2, 2, allow_nan=False, width=32), st.integers(1, 3)), min_size=1, max_size=5))
def test_prefix_contributions_telescope_to_r_minus_the_first_value(episodes):
    """For any readouts V_0..V_{T-1} and R, split over any number of rows per episode: sum_t c_t = R - V_0."""
    rows, index, rewards, expected = [], [], [], []
    for e, (values, r, n_rows) in enumerate(episodes):
        bounds = sorted({0, len(values)} | {min(len(values), (len(values) * j) // n_rows) for j in range(1, n_rows)})
        for a, b in zip(bounds, bounds[1:]):
            rows.append(values[a:b])
            index.append(e)
        rewards.append(r)
        expected.append(r - values[0])
    width = max(len(x) for x in rows)
    v = torch.tensor([x + [0.0] * (width - len(x)) for x in rows], dtype=torch.float64)
    valid = torch.arange(width).unsqueeze(0) < torch.tensor([len(x) for x in rows]).unsqueeze(1)
    idx = torch.tensor(index)
    c = obj.contributions_from_readouts(v, valid, "prefix", torch.tensor(rewards), idx)
    sums = torch.zeros(len(episodes), dtype=torch.float64).index_add(0, idx, c.double().sum(1))
    torch.testing.assert_close(sums, torch.tensor(expected, dtype=torch.float32).double(), rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------------------- the online service

def _service(loss, **kw):
    from spa_reward.steprm.service import StepRewardModel
    from tests.steprm.helpers import tiny_backbone

    torch.manual_seed(0)
    return StepRewardModel({**dict(objective="progress", loss=loss, online=True, backbone_config=tiny_backbone(
        vocab_size=20), head="linear", lr=1e-2, micro_batch_size=2, device="cpu"), **kw})


def _items():
    # two packed episodes: prompt 3 tokens; turns [3, 5) and [6, 8) / [3, 6)
    return [{"input_ids": [1, 2, 3, 4, 5, 6, 7, 8], "prompt_length": 3, "turn_spans": [[3, 5], [6, 8]], "reward": 1.0},
            {"input_ids": [2, 3, 9, 8, 7, 6], "prompt_length": 3, "turn_spans": [[3, 6]], "reward": 0.0}]


def _head(svc, ids, positions):
    with torch.no_grad():
        return svc.serving(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long),
                           torch.tensor([positions]))[0].tolist()


def test_service_scores_and_trains_the_prefix_objective():
    svc = _service("prefix")
    items = _items()
    v0 = _head(svc, items[0]["input_ids"], [2, 5])  # V before each turn: the token before its first token
    v1 = _head(svc, items[1]["input_ids"], [2])
    scored = svc.score(items)
    assert scored[0] == pytest.approx([v0[1] - v0[0], 1.0 - v0[1]], abs=1e-6)
    assert scored[1] == pytest.approx([0.0 - v1[0]], abs=1e-6)
    hand = (((v0[0] - 1) ** 2 + (v0[1] - 1) ** 2) / 2 + v1[0] ** 2) / 2
    m = svc.update(items)
    assert m["steprm/loss_first"] == pytest.approx(hand, abs=1e-5)
    with pytest.raises(ValueError, match="item 0 has no 'reward'"):
        svc.score([{"input_ids": [1, 2, 3], "turn_spans": [[1, 3]]}])


def test_service_prefix_on_window_rows_chains_the_episode():
    """Rows of one episode (interleaved with another episode's row) chain: c of a row = V before the next row's
    step - V before its own, R after the last row."""
    svc = _service("prefix")
    rows = [{"input_ids": [1, 2, 3, 4], "prompt_length": 2, "turn_spans": [[2, 4]], "reward": 1.0, "episode": "a"},
            {"input_ids": [8, 9, 1, 2], "prompt_length": 3, "turn_spans": [[3, 4]], "reward": 0.0, "episode": "b"},
            {"input_ids": [5, 6, 7], "prompt_length": 1, "turn_spans": [[1, 3]], "reward": 1.0, "episode": "a"}]
    v = [_head(svc, r["input_ids"], [r["prompt_length"] - 1])[0] for r in rows]
    assert [s[0] for s in svc.score(rows)] == pytest.approx([v[2] - v[0], 0.0 - v[1], 1.0 - v[2]], abs=1e-6)
    hand = (((v[0] - 1) ** 2 + (v[2] - 1) ** 2) / 2 + v[1] ** 2) / 2
    assert svc.update(rows)["steprm/loss_first"] == pytest.approx(hand, abs=1e-5)


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
