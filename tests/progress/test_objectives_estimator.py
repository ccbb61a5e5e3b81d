"""The progress estimator under each objective (sum, prefix, prefix_sum): where V(before step 0) is read after
truncation, the examples and batches carry it in both layouts, serving turns readouts into c_t as the objective
says, training records the objective, and mismatches are refused."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings, strategies as st
from progress_helpers import VOCAB, random_record, tiny_config

from spa_reward.progress import train as train_mod
from spa_reward.progress.data import (ExampleSet, collate_examples, collate_window_examples, readout_start,
                                      truncate_for_estimator)
from spa_reward.progress.model import ProgressEstimator, predict_batched
from spa_reward.progress.serve import ProgressScorer, check_estimator_objective
from spa_reward.records import validate_record, write_records


def _traj(prompt: int, turns: list[tuple[int, int]]):
    ids, ends = list(range(prompt)), []
    for obs, length in turns:
        ids += list(range(len(ids), len(ids) + obs + length))
        ends.append(len(ids) - 1)
    return ids, ends


def test_readout_start_follows_the_truncation():
    ids, ends = _traj(5, [(3, 4), (3, 4), (3, 4)])  # ends 11, 18, 25
    assert readout_start(truncate_for_estimator(ids, ends, 100, 5), 5) == 4  # untouched: the prompt's last token
    t = truncate_for_estimator(ids, ends, 20, 5)  # prompt kept, turn 0 dropped
    assert t.input_ids[:5] == ids[:5] and readout_start(t, 5) == 4
    t = truncate_for_estimator(ids, ends, 14, 0)  # prompt dropped with turn 0: the first kept token
    assert readout_start(t, 5) == 0
    t = truncate_for_estimator(ids, ends, 4, 5)  # last turn only, partial: the first kept token
    assert readout_start(t, 5) == 0


@settings(max_examples=150, deadline=None)
@given(prompt=st.integers(1, 8), turns=st.lists(st.tuples(st.integers(0, 6), st.integers(1, 6)), min_size=1, max_size=6),
       max_length=st.integers(2, 60), keep=st.booleans())
def test_readout_start_is_the_prompt_end_or_0_and_before_the_first_turn(prompt, turns, max_length, keep):
    ids, ends = _traj(prompt, turns)
    t = truncate_for_estimator(ids, ends, max_length, prompt if keep else 0)
    start = readout_start(t, prompt)
    assert 0 <= start < max(t.turn_ends[0], 1)
    if t.input_ids[:prompt] == ids[:prompt] and t.turn_ends[0] >= prompt:
        assert start == prompt - 1  # the prompt survived: V(before step 0) is read at its last token
    else:
        assert start == 0


def test_example_sets_carry_prompt_ends_in_both_layouts():
    rng = random.Random(3)
    recs = [validate_record(random_record(rng, i, n_turns=n, prompt_len=p)) for i, (n, p) in enumerate([(2, 3), (3, 5)])]
    packed = ExampleSet()
    for r in recs:
        packed.append(r, max_length=4096)
    batch = collate_examples([packed[0], packed[1]])
    assert batch["start_positions"].tolist() == [2, 4]
    window = ExampleSet()
    rows = {0: [([1, 2, 3, 4], 2), ([5, 6, 7, 8, 9], 3)], 1: [([1, 2, 3], 1), ([4, 5, 6, 7], 2), ([8, 9], 1)]}
    for i, r in enumerate(recs):
        window.append_rows(r, rows[i], max_length=4096)
    assert window[0].prompt_ends == [1, 4 + 2]  # per row, in the episode's concatenated ids
    batch = collate_window_examples([window[0], window[1]])
    # per row, in that row's own coordinates: its prompt's last token
    assert batch["start_positions"].tolist() == [1, 2, 0, 1, 0]
    assert batch["episode_index"].tolist() == [0, 0, 1, 1, 1]


@pytest.mark.parametrize("objective", ["sum", "prefix", "prefix_sum"])
def test_scorer_turns_readouts_into_c_t_as_the_objective_says(tmp_path, objective):
    torch.manual_seed(0)
    model = ProgressEstimator(tiny_config(objective=objective)).eval()
    model.save_pretrained(tmp_path / "est")
    rng = random.Random(1)
    recs = [validate_record(random_record(rng, i, n_turns=3, prompt_len=4)) for i in range(3)]
    scorer = ProgressScorer(tmp_path / "est", device="cpu")
    assert scorer.info()["objective"] == objective
    got = scorer.score([{"input_ids": r.input_ids, "turn_ends": r.turn_ends, "prompt_length": r.prompt_length}
                        for r in recs])
    for r, c in zip(recs, got):
        ids = r.input_ids[: r.turn_ends[-1] + 1]
        head = predict_batched(model, [ids], [[r.prompt_length - 1] + list(r.turn_ends)])[0]  # V at prompt, turn ends
        if objective == "sum":
            expected = head[1:]
        elif objective == "prefix":
            expected = [head[t + 1] - head[t] for t in range(3)]
        else:
            expected = [head[1]] + [head[t + 1] - head[t] for t in range(1, 3)]
        assert c == pytest.approx(expected, abs=1e-5)
    if objective == "prefix":
        with pytest.raises(ValueError, match="item 0 has no prompt_length"):
            scorer.score([{"input_ids": recs[0].input_ids, "turn_ends": recs[0].turn_ends}])
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
        _train(tmp_path, "prefix", "--resume", "--objective", "prefix_sum", "--epochs", "2")


def test_prefix_sum_is_refused_in_the_window_layout(tmp_path):
    _records(tmp_path)
    torch.manual_seed(0)
    ProgressEstimator(tiny_config(objective="prefix_sum")).save_pretrained(tmp_path / "init")
    with pytest.raises(SystemExit, match="prefix_sum needs the full layout"):
        train_mod.train(train_mod.build_parser().parse_args([
            "--records", str(tmp_path / "train.jsonl"), "--model", str(tmp_path / "init"), "--output",
            str(tmp_path / "w"), "--layout", "window", "--history-length", "1", "--logger", "none",
            "--no-progress-bar", "--no-plot", "--device", "cpu"]),
            rows_of=lambda rec, k: [(list(rec.input_ids[: e + 1]), rec.prompt_length) for e in rec.turn_ends])
