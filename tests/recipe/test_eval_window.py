"""Evaluation tables count episodes, not step rows: a window-layout validation dump written by verl's own
``_validate`` / ``_write_generations`` (one line per step, each with the episode's scalars) gives the same table as
one line per episode."""

from __future__ import annotations

import json

import pytest
from omegaconf import open_dict

from envs.actions import format_action

ray = pytest.importorskip("ray")
tq = pytest.importorskip("transfer_queue")


def policy(turn, prompt):
    if "reach 2" in prompt:  # task t1: waits until max_steps (lost, 4 steps)
        return format_action("wait", "I wait.", "react")
    return format_action("step forward", "I walk.", "react")  # t0: won in 1 step, t2: won in 3


@pytest.mark.slow
def test_window_validation_dump_counts_each_episode_once(transfer_queue, toy_env, tokenizer, tmp_path, monkeypatch):
    from recipe.spa import compare, eval_table
    from tests.recipe import test_rehearsal as rehearsal

    monkeypatch.setattr(rehearsal, "policy", policy)
    tok_dir = tmp_path / "tok"
    tokenizer.save_pretrained(str(tok_dir))
    cfg = rehearsal.rehearsal_config(tmp_path, tok_dir, "gigpo")
    with open_dict(cfg):
        cfg.env.history = "window"
        cfg.env.history_length = 2
        cfg.env.max_steps = 4
        cfg.env.env_kwargs = {}
    trainer = rehearsal.build_trainer(cfg, tokenizer)
    trainer.val_dataloader = rehearsal.ListLoader(["t0", "t1", "t2"], 3)
    trainer.agent_loop_manager = rehearsal.EnvAgentLoopManager(cfg, tokenizer)
    metrics = trainer._validate()  # verl's real validation: TransferQueue, replay buffer, metrics, dump
    trainer._shutdown_dump_executor()

    dump = tmp_path / "val_dump" / "0.jsonl"
    lines = [json.loads(x) for x in dump.read_text().splitlines()]
    assert len(lines) == 1 + 4 + 3  # verl dumps every step row of each session
    assert sorted(x["uid"].rsplit("_", 1)[1] for x in lines) == ["0", "0", "0", "1", "1", "2", "2", "3"]
    infos, skipped = eval_table.episode_infos(dump)
    assert skipped == 0 and len(infos) == 3
    rows = dict(eval_table.table_rows(infos))
    # by episode: t0 won (1 turn, even), t1 lost (4 turns, odd), t2 won (3 turns, even); by row it would be
    # 8 "episodes", success 4/8 and even turns (1 + 3 * 3) / 4
    assert rows["all"]["episodes"] == 3 and rows["all"]["success"] == pytest.approx(2 / 3)
    assert rows["all"]["turns"] == pytest.approx(8 / 3)
    assert rows["even"]["episodes"] == 2 and rows["even"]["turns"] == pytest.approx(2.0)
    assert rows["odd"]["episodes"] == 1 and rows["odd"]["success"] == 0.0
    # verl's own validation metric counts the final rows only, and agrees
    won = [v for k, v in metrics.items() if k.startswith("val-") and "/spa/won/mean" in k]
    assert won and won[0] == pytest.approx(2 / 3), sorted(metrics)
    # the comparison report reads the same dumps
    assert dict(compare.dump_rows(dump)) == rows


def test_dump_lines_of_one_session_are_one_episode(tmp_path):
    """The same rule on hand-written lines in verl's dump format: the final line of each ``{uid}_{session}_{i}``
    session counts once; a line without ``uid`` is an episode of its own."""
    from recipe.spa.eval_table import episode_infos

    def line(key, won, turns, task_type="a"):
        row = {"input": "", "output": "", "score": float(won), "step": 0, "spa/won": float(won),
               "spa/num_turns": float(turns), "spa/task_type": task_type}
        return json.dumps(row if key is None else {**row, "uid": key})

    rows = [line("u1_0_0", 1, 3), line("u1_0_2", 1, 3), line("u1_0_1", 1, 3), line("u1_1_0", 0, 1),
            line("x_y_z", 0, 2), line(None, 1, 5), line(None, 1, 5)]
    dump = tmp_path / "0.jsonl"
    dump.write_text("\n".join(rows) + "\n")
    infos, _ = episode_infos(dump)
    assert [(i["won"], i["num_turns"]) for i in infos] == [(1.0, 3.0), (0.0, 1.0), (0.0, 2.0), (1.0, 5.0),
                                                           (1.0, 5.0)]
