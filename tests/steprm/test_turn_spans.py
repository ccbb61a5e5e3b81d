"""The step-reward service reads the progress head where the offline ``ProgressScorer`` does, whatever form the
turns come in: the reward manager's ``turn_starts`` + ``turn_ends`` (first and last token of each turn, inclusive:
``SpaRewardManager.scorer_item``) or the trainer hooks' ``turn_spans`` (``[start, end)``).

Multi-token turns make the difference visible: ``prefix`` reads V_t at the token before turn t's first token, so a
service that turned ``turn_ends`` into one-token spans ``[e, e + 1)`` read it at the turn's second-to-last token
instead (online SPA and the multi-GPU frozen scorer scored at other positions than they trained / than the offline
scorer). The expected values are also computed by hand from the estimator's head at the listed positions."""

from __future__ import annotations

import pytest
import torch

from spa_reward.progress.model import ProgressEstimator, ProgressEstimatorConfig
from spa_reward.progress.serve import ProgressScorer
from spa_reward.steprm.service import StepRewardModel, parse_items
from tests.steprm.helpers import tiny_backbone

VOCAB = 20
R = 1.0

# prompt [0, 3); turn 0 = [3, 7); observation 7, 8; turn 1 = [9, 12); observation 12; turn 2 = [13, 17); tail 17
IDS_A = [1, 2, 3, 4, 5, 6, 7, 15, 16, 8, 9, 10, 17, 11, 12, 13, 14, 18]
SPANS_A = [[3, 7], [9, 12], [13, 17]]
BEFORE_A = [2, 8, 12]  # the token before each turn's first token
END_A = [6, 11, 16]  # each turn's last token
# prompt [0, 2); turn 0 = [2, 5); observation 5, 6, 7; turn 1 = [8, 12)
IDS_B = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]
SPANS_B = [[2, 5], [8, 12]]
BEFORE_B = [1, 7]
END_B = [4, 11]


def rm_item(ids, spans, prompt_length, **extra) -> dict:
    """The reward manager's scorer item (``SpaRewardManager.scorer_item``): turn ends and starts, inclusive."""
    return {"input_ids": list(ids), "turn_starts": [a for a, _ in spans], "turn_ends": [b - 1 for _, b in spans],
            "prompt_length": prompt_length, "reward": R, **extra}


def span_item(ids, spans, prompt_length, **extra) -> dict:
    """The trainer hooks' item (``turn_spans``, [start, end))."""
    return {"input_ids": list(ids), "turn_spans": [list(s) for s in spans], "prompt_length": prompt_length,
            "reward": R, **extra}


def estimator(path, objective: str, max_length: int = 4096):
    torch.manual_seed(0)
    model = ProgressEstimator(ProgressEstimatorConfig(backbone_config=tiny_backbone(vocab_size=VOCAB),
                                                      objective=objective, max_length=max_length))
    model.save_pretrained(path)
    return model.eval()


def head(model, ids, positions) -> list[float]:
    """The head's readouts of ``ids`` at ``positions`` (one untruncated sequence)."""
    with torch.no_grad():
        return model(torch.tensor([ids]), None, torch.tensor([positions])).float()[0].tolist()


def by_hand(model, objective: str, ids, befores, ends) -> list[float]:
    """c_t: ``sum``: the readout at each turn's end; ``prefix``: V_{t+1} - V_t with V_t read before turn t, V_T = R."""
    if objective == "sum":
        return head(model, ids, ends)
    v = head(model, ids, befores) + [R]
    return [v[t + 1] - v[t] for t in range(len(befores))]


def service(path, online: bool = False, **kw) -> StepRewardModel:
    return StepRewardModel(dict(objective="progress", loss=kw.pop("loss", None), online=online, model_path=str(path),
                                device="cpu", **kw))


def close(a, b, tol=1e-5) -> bool:
    return len(a) == len(b) and all(x == pytest.approx(y, abs=tol) for x, y in zip(a, b))


def all_close(got, want, tol=1e-5) -> bool:
    return len(got) == len(want) and all(close(g, w, tol) for g, w in zip(got, want))


@pytest.mark.parametrize("objective", ["prefix", "sum"])
def test_reward_manager_items_score_like_progress_scorer_and_turn_spans(objective, tmp_path):
    model = estimator(tmp_path, objective)
    want = [by_hand(model, objective, IDS_A, BEFORE_A, END_A), by_hand(model, objective, IDS_B, BEFORE_B, END_B)]
    if objective == "prefix":  # the readouts before a turn differ from those at the previous positions: not vacuous
        wrong = head(model, IDS_A, [e - 1 for e in END_A])
        assert not close(head(model, IDS_A, BEFORE_A), wrong, tol=1e-3)
    rm = [rm_item(IDS_A, SPANS_A, 3), rm_item(IDS_B, SPANS_B, 2)]
    spans = [span_item(IDS_A, SPANS_A, 3), span_item(IDS_B, SPANS_B, 2)]
    assert all_close(ProgressScorer(tmp_path, device="cpu").score(rm), want)
    svc = service_for(tmp_path, objective)
    assert all_close(svc.score(rm), want)
    assert all_close(svc.score(spans), want)


def service_for(path, objective, **kw):
    return service(path, loss=objective, **kw)


@pytest.mark.parametrize("objective", ["prefix", "sum"])
def test_truncated_and_window_rows_score_like_progress_scorer(objective, tmp_path):
    """Truncation (max_length 14 drops turn 0 of IDS_A, keeping the prompt) and a window-layout episode of two rows
    (the prefix objective chains V across the rows): the service equals ProgressScorer on both item forms."""
    estimator(tmp_path, objective, max_length=14)
    rows = [dict(r, episode="ep") for r in (rm_item(IDS_B, SPANS_B, 2), rm_item(IDS_A, SPANS_A, 3))]
    rm = [rm_item(IDS_A, SPANS_A, 3)] + rows
    spans = [span_item(IDS_A, SPANS_A, 3)] + [dict(span_item(IDS_B, SPANS_B, 2), episode="ep"),
                                              dict(span_item(IDS_A, SPANS_A, 3), episode="ep")]
    want = ProgressScorer(tmp_path, device="cpu").score(rm)
    assert want[0][0] == 0.0 and want[0][1] != 0.0  # turn 0 dropped by truncation, the others scored
    svc = service_for(tmp_path, objective)
    assert all_close(svc.score(rm), want)
    assert all_close(svc.score(spans), want)


def test_prefix_refuses_turn_ends_without_turn_starts_sum_accepts_them(tmp_path):
    estimator(tmp_path / "prefix", "prefix")
    model = estimator(tmp_path / "sum", "sum")
    ends_only = {"input_ids": IDS_A, "turn_ends": END_A, "prompt_length": 3, "reward": R}
    with pytest.raises(ValueError, match=r"item 1 has 'turn_ends' but no 'turn_starts'"):
        service_for(tmp_path / "prefix", "prefix").score([rm_item(IDS_B, SPANS_B, 2), ends_only])
    with pytest.raises(ValueError, match=r"item 0 has 'turn_ends' but no 'turn_starts'"):
        parse_items([ends_only], "progress", need_ref=False, loss="prefix")
    # sum reads only the turn ends: turn_ends alone is well defined
    assert all_close(service_for(tmp_path / "sum", "sum").score([ends_only]),
                     [by_hand(model, "sum", IDS_A, BEFORE_A, END_A)])
    bad = dict(rm_item(IDS_A, SPANS_A, 3), turn_starts=[3, 9])
    with pytest.raises(ValueError, match=r"item 0: turn_starts \[3, 9\] do not fit turn_ends"):
        parse_items([bad], "progress", need_ref=False, loss="sum")
    late = dict(rm_item(IDS_A, SPANS_A, 3), turn_starts=[3, 12, 13])  # turn 1 starts after its last token
    with pytest.raises(ValueError, match="do not fit"):
        parse_items([late], "progress", need_ref=False, loss="prefix")


def test_reward_manager_items_become_the_turn_spans():
    (it,) = parse_items([rm_item(IDS_A, SPANS_A, 3)], "progress", need_ref=False, loss="prefix")
    assert it.spans == SPANS_A


def test_online_prefix_trains_on_reward_manager_items_like_on_turn_spans(tmp_path):
    """``update`` goes through the same normalisation: the same loss and the same trained scores on either form."""
    estimator(tmp_path, "prefix")
    rm = [dict(rm_item(IDS_A, SPANS_A, 3), uid="a"), dict(rm_item(IDS_B, SPANS_B, 2), uid="b")]
    spans = [dict(span_item(IDS_A, SPANS_A, 3), uid="a"), dict(span_item(IDS_B, SPANS_B, 2), uid="b")]
    one, two = (service_for(tmp_path, "prefix", online=True, lr=1e-2) for _ in range(2))
    for _ in range(2):
        assert one.update(rm)["steprm/loss"] == pytest.approx(two.update(spans)["steprm/loss"], abs=1e-6)
    assert all_close(one.score(rm), two.score(spans), tol=1e-6)


@pytest.fixture
def one_rank():
    """A one-rank gloo process group in this process (the sharded model needs the default group)."""
    dist = pytest.importorskip("torch.distributed")
    if dist.is_initialized():
        pytest.skip("a process group is already up in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("objective", ["prefix", "sum"])
def test_sharded_scorer_reads_reward_manager_items_like_progress_scorer(one_rank, objective, tmp_path):
    """SCORER_GPUS >= 2 serves the frozen estimator from the sharded model: same normalisation, same c_t."""
    from spa_reward.steprm.sharded import ShardedStepRewardModel

    model = estimator(tmp_path, objective)
    want = [by_hand(model, objective, IDS_A, BEFORE_A, END_A), by_hand(model, objective, IDS_B, BEFORE_B, END_B)]
    rm = [rm_item(IDS_A, SPANS_A, 3), rm_item(IDS_B, SPANS_B, 2)]
    shard = ShardedStepRewardModel(dict(objective="progress", loss=objective, online=False, model_path=str(tmp_path),
                                        device="cpu"))
    assert all_close(shard.score(rm), want)
    assert all_close(ProgressScorer(tmp_path, device="cpu").score(rm), want)
