"""Estimator training in the window layout (--layout window): the loss is SPA's MSE(sum_t c_t, R) with the sum over
an episode's rows, it learns on the synthetic task, and an estimator is refused for a run in the other layout."""

from __future__ import annotations

import json
import random

import pytest
import torch
from progress_helpers import VOCAB, random_record, tiny_config

from spa_reward.progress import synthetic
from spa_reward.progress import train as train_mod
from spa_reward.progress.data import ExampleSet, collate_window_examples
from spa_reward.progress.model import ProgressEstimator
from spa_reward.progress.serve import check_estimator_layout, estimator_layout
from spa_reward.steprm.objectives import progress_episode_losses
from spa_reward.records import validate_record, write_records


def test_window_loss_is_the_episode_sum_formula():
    torch.manual_seed(0)
    model = ProgressEstimator(tiny_config()).eval()
    rng = random.Random(5)
    recs = [validate_record(random_record(rng, i, n_turns=n)) for i, n in enumerate((2, 3))]
    rows = {r.episode_id: [([rng.randrange(VOCAB) for _ in range(rng.randint(3, 9))], 2) for _ in range(r.num_turns)]
            for r in recs}
    examples = ExampleSet()
    for r in recs:
        examples.append_rows(r, rows[r.episode_id], max_length=4096)
    batch = collate_window_examples([examples[0], examples[1]])
    assert batch["episode_index"].tolist() == [0, 0, 1, 1, 1] and batch["turn_end_positions"].shape == (5, 1)
    with torch.no_grad():
        contrib = model(batch["input_ids"], batch["attention_mask"], batch["turn_end_positions"])
        pred = torch.zeros(2).index_add(0, batch["episode_index"], contrib.sum(1))
        # by hand: every row alone through the model, c read at its last token, summed per episode
        c = {r.episode_id: [float(model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long),
                                          torch.tensor([[len(ids) - 1]]))[0, 0]) for ids, _ in rows[r.episode_id]]
             for r in recs}
    sums = [sum(c[r.episode_id]) for r in recs]
    assert pred.tolist() == pytest.approx(sums, abs=1e-5)
    loss = float(((pred - batch["rewards"]) ** 2).mean())
    assert loss == pytest.approx(sum((s - r.reward) ** 2 for s, r in zip(sums, recs)) / 2, abs=1e-5)
    # what the trainer computes: the shared episode loss over the batch's rows
    valid = batch["turn_end_positions"] >= 0
    assert float(progress_episode_losses(contrib, valid, batch["rewards"], "sum", batch["episode_index"]).mean()) == \
        pytest.approx(loss, abs=1e-5)
    # the packed formula on the same c_t: a packed batch's rows are episodes, no index_add
    packed = {"rewards": batch["rewards"]}
    padded = torch.zeros(2, 3)
    for e, r in enumerate(recs):
        padded[e, : r.num_turns] = torch.tensor(c[r.episode_id])
    valid = torch.arange(3).unsqueeze(0) < torch.tensor([r.num_turns for r in recs]).unsqueeze(1)
    assert progress_episode_losses(padded, valid, packed["rewards"], "sum").tolist() == pytest.approx(
        [(x - r.reward) ** 2 for x, r in zip(sums, recs)], abs=1e-5)


def _synthetic_files(tmp_path):
    task = synthetic.SyntheticTaskConfig(count_once=False, max_turns=5)
    write_records(tmp_path / "train.jsonl", synthetic.make_synthetic_records(160, seed=0, cfg=task))
    write_records(tmp_path / "eval.jsonl", synthetic.make_synthetic_records(40, seed=1, cfg=task))


def _run(tmp_path, out, *extra, rows_of=synthetic.window_rows):
    torch.manual_seed(0)
    ProgressEstimator(tiny_config()).save_pretrained(tmp_path / "init") if not (tmp_path / "init").exists() else None
    args = train_mod.build_parser().parse_args([
        "--records", str(tmp_path / "train.jsonl"), "--eval-records", str(tmp_path / "eval.jsonl"),
        "--model", str(tmp_path / "init"), "--output", str(out), "--lr", "2e-3", "--warmup-steps", "1",
        "--batch-size", "8", "--grad-accum", "1", "--device", "cpu", "--no-progress-bar", "--num-threads", "1",
        "--logger", "none", "--no-plot", "--layout", "window", "--history-length", "2", *extra])
    return train_mod.train(args, rows_of=rows_of)


def test_window_training_lowers_the_loss_and_records_its_layout(tmp_path):
    _synthetic_files(tmp_path)
    out = tmp_path / "win"
    _run(tmp_path, out, "--epochs", "3", "--eval-every", "20")
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    losses = [h["train/loss"] for h in history if "train/loss" in h]
    evals = [h["eval/mse"] for h in history if "eval/mse" in h]
    assert len(losses) == 60 and sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10, losses
    assert evals[-1] < 0.5 * evals[0], evals
    run = json.loads((out / "run_config.json").read_text())
    assert run["data"]["layout"] == "window" and run["data"]["history_length"] == 2
    assert estimator_layout(out) == ("window", 2)
    # the window layout changes the input: row 0 of an episode holds no earlier turn, the last one at most 2
    rec = synthetic.make_synthetic_records(1, seed=0, cfg=synthetic.SyntheticTaskConfig(min_turns=5, max_turns=5))[0]
    rows = synthetic.window_rows(rec, 2)
    assert rows[0][0] == rec.input_ids[: rec.turn_spans[0][1]]
    assert rows[4][0] == (rec.input_ids[: rec.prompt_length] + rec.input_ids[rec.turn_spans[1][1]:])
    # resuming in another layout is refused
    with pytest.raises(SystemExit, match="trained in layout 'window'.*asks for 'full'"):
        _run(tmp_path, out, "--resume", "--layout", "full")


def test_serving_refuses_the_other_layout(tmp_path, tiny_estimator_dir):
    _synthetic_files(tmp_path)
    out = tmp_path / "win"
    _run(tmp_path, out, "--max-steps", "1")
    check_estimator_layout(out, "window", 2)  # the layout it was trained in
    with pytest.raises(ValueError, match=r"trained in the window \(history_length=2\) layout but this run uses "
                                         r"env.history=full.*--layout full"):
        check_estimator_layout(out, "full")
    with pytest.raises(ValueError, match=r"env.history=window \(env.history_length=3\).*--history-length 3"):
        check_estimator_layout(out, "window", 3)
    # an estimator saved before layouts were recorded was trained on packed rows
    assert estimator_layout(tiny_estimator_dir) == ("full", None)
    check_estimator_layout(tiny_estimator_dir, "full")
    with pytest.raises(ValueError, match="trained in the full layout.*--layout window --history-length 2"):
        check_estimator_layout(tiny_estimator_dir, "window", 2)


def test_config_check_and_trainer_start_refuse_a_layout_mismatch(tiny_estimator_dir):
    from recipe.spa.settings import estimator_layout_problems
    from spa_reward.steprm.trainer_hooks import StepRewardHooks
    from tests.recipe.helpers import trainer_config

    args = ("algorithm.reward=spa", "algorithm.adv_estimator=gigpo", f"algorithm.spa.estimator_path={tiny_estimator_dir}",
            "algorithm.spa.objective=sum")  # the fixture is a sum estimator; this test is about the layout
    assert estimator_layout_problems(trainer_config(*args)) == []
    cfg = trainer_config(*args, "env.history=window")
    (problem,) = estimator_layout_problems(cfg)
    assert "trained in the full layout" in problem and "env.history=window" in problem
    assert estimator_layout_problems(trainer_config(*args[:2], "algorithm.spa.estimator_path=/no/such")) == []
    with pytest.raises(ValueError, match="trained in the full layout"):  # before any actor is started
        StepRewardHooks(cfg).start()
