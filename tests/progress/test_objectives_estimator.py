"""The progress estimator under each objective (sum, prefix): where V before each step is read after truncation,
the examples and batches carry those positions in both layouts, serving turns readouts into c_t as the objective
says (across the rows of a window episode too), training records the objective, and mismatches are refused."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings, strategies as st
from progress_helpers import random_record, tiny_config

from spa_reward.progress import train as train_mod
from spa_reward.progress.data import (ExampleSet, before_positions, collate_examples, collate_window_examples,
                                      truncate_for_estimator)
from spa_reward.progress.model import ProgressEstimator, predict_batched
from spa_reward.progress.serve import ProgressScorer, check_estimator_objective
from spa_reward.records import validate_record, write_records


def _traj(prompt: int, turns: list[tuple[int, int]]):
    """ids = arange; turns = [(obs_len_before, turn_len)]; returns ids, ends, starts."""
    ids, ends, starts = list(range(prompt)), [], []
    for obs, length in turns:
        ids += list(range(len(ids), len(ids) + obs))
        starts.append(len(ids))
        ids += list(range(len(ids), len(ids) + length))
        ends.append(len(ids) - 1)
    return ids, ends, starts


def test_before_positions_follow_the_truncation():
    ids, ends, starts = _traj(5, [(3, 4), (3, 4), (3, 4)])  # starts 8, 15, 22; ends 11, 18, 25
    t = truncate_for_estimator(ids, ends, 100, 5)
    assert before_positions(t, starts) == [7, 14, 21]  # the observation's last token before each turn
    t = truncate_for_estimator(ids, ends, 20, 5)  # prompt kept, turn 0 dropped: ids[:5] + ids[12:]
    assert before_positions(t, starts) == [14 - 12 + 5, 21 - 12 + 5]
    t = truncate_for_estimator(ids, ends, 4, 5)  # last turn only, partial (ids[22:]): nothing before it is kept
    assert before_positions(t, starts) == [0]
    ids, ends, starts = _traj(4, [(0, 3), (0, 2)])  # turns right after the prompt / the previous turn
    assert before_positions(truncate_for_estimator(ids, ends, 100, 4), starts) == [3, 6]
    t = truncate_for_estimator(ids, ends, 6, 4)  # the turn before turn 1 is dropped: the prompt's last token
    assert t.kept == [1] and before_positions(t, starts) == [3]


@settings(max_examples=150, deadline=None)
@given(prompt=st.integers(1, 8), turns=st.lists(st.tuples(st.integers(0, 6), st.integers(1, 6)), min_size=1, max_size=6),
       max_length=st.integers(2, 60), keep=st.booleans())
def test_before_position_is_the_token_before_the_turn_when_kept(prompt, turns, max_length, keep):
    ids, ends, starts = _traj(prompt, turns)
    t = truncate_for_estimator(ids, ends, max_length, prompt if keep else 0)
    got = before_positions(t, starts)
    assert len(got) == len(t.kept)
    for k, end, b in zip(t.kept, t.turn_ends, got):
        assert 0 <= b < max(end, 1)
        if ids[starts[k] - 1] in t.input_ids[:end]:  # ids are unique: the token before the turn survived
            assert t.input_ids[b] == ids[starts[k] - 1]


def test_example_sets_carry_before_positions_in_both_layouts():
    rng = random.Random(3)
    recs = [validate_record(random_record(rng, i, n_turns=n, prompt_len=p)) for i, (n, p) in enumerate([(2, 3), (3, 5)])]
    packed = ExampleSet()
    for r in recs:
        packed.append(r, max_length=4096)
    batch = collate_examples([packed[0], packed[1]])
    for row, r in enumerate(recs):
        expected = [a - 1 for a, _ in r.turn_spans]
        assert batch["before_positions"][row, : r.num_turns].tolist() == expected
    window = ExampleSet()
    rows = {0: [([1, 2, 3, 4], 2), ([5, 6, 7, 8, 9], 3)], 1: [([1, 2, 3], 1), ([4, 5, 6, 7], 2), ([8, 9], 1)]}
    for i, r in enumerate(recs):
        window.append_rows(r, rows[i], max_length=4096)
    assert window[0].befores == [1, 4 + 2]  # per row, in the episode's concatenated ids
    batch = collate_window_examples([window[0], window[1]])
    # per row, in that row's own coordinates: its prompt's last token
    assert batch["before_positions"][:, 0].tolist() == [1, 2, 0, 1, 0]
    assert batch["episode_index"].tolist() == [0, 0, 1, 1, 1]


@pytest.mark.parametrize("objective", ["sum", "prefix"])
def test_scorer_turns_readouts_into_c_t_as_the_objective_says(tmp_path, objective):
    torch.manual_seed(0)
    model = ProgressEstimator(tiny_config(objective=objective)).eval()
    model.save_pretrained(tmp_path / "est")
    rng = random.Random(1)
    recs = [validate_record(random_record(rng, i, n_turns=3, prompt_len=4)) for i in range(3)]
    scorer = ProgressScorer(tmp_path / "est", device="cpu")
    assert scorer.info()["objective"] == objective
    items = [{"input_ids": r.input_ids, "turn_ends": r.turn_ends, "turn_starts": [a for a, _ in r.turn_spans],
              "prompt_length": r.prompt_length, "reward": r.reward} for r in recs]
    got = scorer.score(items)
    for r, c in zip(recs, got):
        ids = r.input_ids[: r.turn_ends[-1] + 1]
        if objective == "sum":
            expected = predict_batched(model, [ids], [list(r.turn_ends)])[0]
        else:
            v = predict_batched(model, [ids], [[a - 1 for a, _ in r.turn_spans]])[0] + [r.reward]
            expected = [v[t + 1] - v[t] for t in range(3)]
        assert c == pytest.approx(expected, abs=1e-5)
    if objective == "prefix":
        with pytest.raises(ValueError, match="item 0 has no turn_starts / reward"):
            scorer.score([{"input_ids": recs[0].input_ids, "turn_ends": recs[0].turn_ends}])
        # window rows of one episode, given in step order with a shared key, chain: c_row = V(next row) - V(row)
        rows = [{"input_ids": [5, 6, 7, 8], "turn_ends": [3], "turn_starts": [2], "prompt_length": 2,
                 "reward": 1.0, "episode": "e"},
                {"input_ids": [9, 10, 11], "turn_ends": [2], "turn_starts": [1], "prompt_length": 1,
                 "reward": 1.0, "episode": "e"}]
        v = [predict_batched(model, [r["input_ids"]], [[r["turn_starts"][0] - 1]])[0][0] for r in rows]
        assert [x[0] for x in scorer.score(rows)] == pytest.approx([v[1] - v[0], 1.0 - v[1]], abs=1e-5)
        with pytest.raises(ValueError, match="the rows of one episode share its R"):
            scorer.score([rows[0], dict(rows[1], reward=0.0)])
    check_estimator_objective(tmp_path / "est", objective)
    other = "sum" if objective != "sum" else "prefix"
    with pytest.raises(ValueError, match=f"trained with --objective {objective} .*algorithm.spa.objective={other}"):
        check_estimator_objective(tmp_path / "est", other)


def _records(tmp_path, n=48, seed=0):
    rng = random.Random(seed)
    recs = [random_record(rng, i, n_turns=rng.randint(1, 4)) for i in range(n)]
    write_records(tmp_path / "train.jsonl", [validate_record(r) for r in recs])


def _train(tmp_path, out, *extra):
    if not (tmp_path / "init").exists():
        torch.manual_seed(0)
        ProgressEstimator(tiny_config()).save_pretrained(tmp_path / "init")
    return train_mod.main(["--records", str(tmp_path / "train.jsonl"), "--model", str(tmp_path / "init"),
                           "--output", str(tmp_path / out), "--lr", "1e-3", "--epochs", "1", "--batch-size", "8",
                           "--warmup-steps", "0", "--logger", "none", "--no-progress-bar", "--no-plot",
                           "--device", "cpu", "--eval-fraction", "0.25", *extra])


def test_training_records_the_objective_and_its_eval_loss(tmp_path):
    _records(tmp_path)
    torch.manual_seed(0)
    ProgressEstimator(tiny_config(objective="prefix")).save_pretrained(tmp_path / "init")
    metrics = _train(tmp_path, "prefix")
    assert ProgressEstimator.from_pretrained(tmp_path / "prefix").config.objective == "prefix"
    assert "eval/loss" in metrics and metrics["eval/loss"] >= 0
    # an estimator dir keeps its objective; another one is refused, as is resuming with another one
    with pytest.raises(SystemExit, match="--objective sum differs from the objective 'prefix'"):
        _train(tmp_path, "other", "--objective", "sum")
    with pytest.raises(SystemExit, match="checkpoint .* was trained with --objective prefix"):
        _train(tmp_path, "prefix", "--resume", "--objective", "sum", "--epochs", "2")
