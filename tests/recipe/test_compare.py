"""recipe.spa.compare on run folders written in the real formats: verl's own Tracking file logger for the metrics
(validation metrics built by verl's ``_val_metrics_update``), verl's ``_write_generations`` for the validation
dumps, and ``recipe.spa.check.run_settings`` of a composed config for ``run_settings.json``."""

from __future__ import annotations

import csv
import json

import pytest

from recipe.spa.check import run_settings
from recipe.spa.compare import main
from tests.recipe.helpers import trainer_config

# validation episodes per step: (won, task score, executable rate, turns, task type)
EPISODES_A = {
    0: [(0, 0.2, 0.5, 10, "pick"), (0, 0.0, 0.5, 10, "pick"), (1, 1.0, 1.0, 4, "heat"), (0, 0.5, 1.0, 8, "heat")],
    2: [(1, 1.0, 1.0, 4, "pick"), (1, 1.0, 1.0, 6, "pick"), (1, 1.0, 1.0, 4, "heat"), (0, 0.5, 0.5, 8, "heat")],
    4: [(1, 1.0, 1.0, 4, "pick"), (0, 0.5, 0.5, 10, "pick"), (1, 1.0, 1.0, 6, "heat"), (0, 0.0, 0.5, 10, "heat")],
}
EPISODES_B = {0: EPISODES_A[0], 2: EPISODES_A[4], 3: EPISODES_A[2]}


@pytest.fixture(scope="module")
def settings():
    return run_settings(trainer_config("env=webshop", "trainer.n_gpus_per_node=2",
                                       "actor_rollout_ref.rollout.tensor_model_parallel_size=2"))


def _log_launch(run_dir, name, file_name, steps, episodes, monkeypatch):
    """One launch of a run: verl's Tracking with the file backend, as the trainer logs (train and val metrics)."""
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer
    from verl.utils.tracking import Tracking

    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(run_dir / "logs" / file_name))
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    tracker = Tracking(project_name="spa_rl", experiment_name=name, default_backend=["file"])
    for step in steps:
        data = {}
        if step > 0:
            data.update({"training/global_step": step, "timing_s/step": 900.0, "actor/pg_loss": 0.1 * step})
        if step in episodes:
            eps = episodes[step]
            extra = {"spa/won": [float(e[0]) for e in eps], "spa/task_score": [e[1] for e in eps],
                     "spa/executable_rate": [e[2] for e in eps], "spa/num_turns": [float(e[3]) for e in eps],
                     "spa/task_type": [e[4] for e in eps],
                     "spa/env_failed": [float(e[5]) if len(e) > 5 else 0.0 for e in eps]}
            uids = [f"u{i}" for i in range(len(eps))]
            data.update(PPOTrainer._val_metrics_update(None, ["webshop"] * len(eps), uids, extra,
                                                       [e[3] for e in eps]))
            PPOTrainer._write_generations(["q"] * len(eps), ["a"] * len(eps), [None] * len(eps),
                                          [10.0 * e[0] for e in eps], extra, str(run_dir / "validation"), step)
        tracker.log(data=data, step=step)
    tracker.logger["file"].finish()


def _run(root, name, settings, monkeypatch, **changes):
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "run_settings.json").write_text(json.dumps({**settings, "experiment_name": name, **changes}))
    return run_dir


def test_compare_table_png_and_resume(tmp_path, settings, monkeypatch, capsys):
    a = _run(tmp_path / "rl" / "webshop", "webshop_grpo", settings, monkeypatch, advantage="GRPO")
    _log_launch(a, "webshop_grpo", "metrics_1.jsonl", range(0, 5), EPISODES_A, monkeypatch)
    b = _run(tmp_path / "rl" / "webshop", "webshop_spa", settings, monkeypatch, advantage="SPA", gpus=3)
    # first launch to step 4, then a resume from the step-2 checkpoint that reaches step 3 (its step 3 replaces
    # the first launch's; the first launch's step 4, its log and its left-over dump, is dropped)
    _log_launch(b, "webshop_spa", "metrics_1.jsonl", range(0, 5), {0: EPISODES_A[0], 2: EPISODES_A[4],
                                                                    4: EPISODES_A[4]}, monkeypatch)
    _log_launch(b, "webshop_spa", "metrics_2.jsonl", [2, 3], {2: EPISODES_B[2], 3: EPISODES_B[3]}, monkeypatch)
    out = tmp_path / "cmp"
    assert main([str(a), str(b), "--out", str(out)]) == 0
    md = (out / "comparison.md").read_text()
    rows = {(r.split("|")[1].strip(), r.split("|")[3].strip()): [c.strip() for c in r.split("|")[1:-1]]
            for r in md.splitlines() if r.startswith("| webshop_")}
    # run A overall: success 25% (step 0), 75% (step 2), 50% (step 4) -> best 75.0 @2, last 50.0 @4;
    # last score (1 + .5 + 1 + 0) / 4 = 62.5, grounding (1 + .5 + 1 + .5) / 4 = 75.0, turns 7.5;
    # 4 steps x 900 s x 2 GPUs = 2.00 GPU hours
    assert rows[("webshop_grpo", "all")][3:] == ["75.0", "2", "50.0", "4", "62.5", "75.0", "7.5", "4", "2.00"]
    # per task type from the dumps: pick 0% -> 100% -> 50%; heat 50% -> 50% -> 50% (best = the earliest)
    assert rows[("webshop_grpo", "pick")][3:7] == ["100.0", "2", "50.0", "4"]
    assert rows[("webshop_grpo", "heat")][3:7] == ["50.0", "0", "50.0", "4"]
    # run B: the resume's steps win: step 2 = 50%, step 3 = 75%, no step 4; 3 steps x 900 s x 3 GPUs = 2.25 h
    assert rows[("webshop_spa", "all")][1:] == ["SPA", "all", "75.0", "3", "75.0", "3", "87.5", "87.5", "5.5", "3",
                                                "2.25"]
    csv_text = (out / "comparison.csv").read_text().splitlines()
    assert csv_text[0].startswith("env,run,advantage,group,best_success") and len(csv_text) == 1 + 6
    png = (out / "val_success_webshop.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "webshop_grpo" in capsys.readouterr().out


def test_env_failed_validation_episodes_are_left_out_of_the_comparison(tmp_path, settings, monkeypatch):
    """verl's val-* means score an env-failed episode 0; the comparison reads the dump, where it is left out (as
    eval_table does): a run is not ranked lower because its env timed out."""
    failed = (0, 0.0, 0.0, 1, "heat", 1.0)
    run = _run(tmp_path / "rl" / "webshop", "webshop_grpo", settings, monkeypatch)
    # step 2: 3 real episodes (2 won) and 1 env failure; step 4: every episode failed (no value that step)
    _log_launch(run, "webshop_grpo", "metrics_1.jsonl", range(0, 5),
                {0: EPISODES_A[0], 2: EPISODES_A[2][:2] + [EPISODES_A[2][3], failed], 4: [failed] * 2}, monkeypatch)
    logged = json.loads((run / "logs" / "metrics_1.jsonl").read_text().splitlines()[2])["data"]
    assert logged["val-aux/webshop/spa/won/mean@1"] == 0.5  # verl's mean counts the failure as a loss
    out = tmp_path / "cmp"
    assert main([str(run), "--out", str(out)]) == 0
    (row,) = [r for r in csv.DictReader((out / "comparison.csv").open()) if r["group"] == "all"]
    # best 2 of 3 = 66.7% at step 2, and the last step with a value is 2 (step 4 had no real episode)
    assert float(row["best_success"]) == pytest.approx(2 / 3) and row["best_step"] == "2", row
    assert float(row["last_success"]) == pytest.approx(2 / 3) and row["last_step"] == "2", row


def test_compare_refuses_mixed_settings(tmp_path, settings, monkeypatch, capsys):
    root = tmp_path / "rl" / "webshop"
    a = _run(root, "a", settings, monkeypatch)
    b = _run(root, "b", settings, monkeypatch, lr=2e-6, group_n=4)
    c = root / "c"
    for run in (a, b, c):
        _log_launch(run, run.name, "metrics_1.jsonl", [0, 1], {0: EPISODES_A[0]}, monkeypatch)
    out = tmp_path / "cmp"
    assert main([str(a), str(b), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "lr: a=1e-06, b=2e-06" in err and "group_n: a=1, b=4" in err and "--allow-mixed" in err
    assert "model" not in err and not out.exists()
    assert main([str(a), str(c), "--out", str(out)]) == 1  # no run_settings.json: cannot tell
    assert "c: no run_settings.json" in capsys.readouterr().err
    assert main([str(a), str(b), str(c), "--out", str(out), "--allow-mixed"]) == 0
    md = (out / "comparison.md").read_text()
    assert "Mixed settings" in md and "lr: a=1e-06, b=2e-06" in md and "| c | " in md
    assert main([str(tmp_path / "nowhere"), "--out", str(out)]) == 1


def test_compare_help_shows_the_output_folder(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "(default: outputs/compare)" in " ".join(capsys.readouterr().out.split())
