"""Training CLI hardening: no code from checkpoints, no silent data loss, safe output folders, argparse checks,
env-failed episodes, warm-up warnings, packed examples."""

from __future__ import annotations

import json
import logging
import random

import numpy as np
import pytest
import torch
from progress_helpers import random_record

from spa_reward.progress import train as train_mod
from spa_reward.progress.data import ExampleSet, record_to_example
from spa_reward.records import validate_record, write_records


@pytest.fixture(scope="module")
def records_file(tmp_path_factory):
    rng = random.Random(1)
    path = tmp_path_factory.mktemp("records") / "train.jsonl"
    write_records(path, [random_record(rng, i) for i in range(16)])
    return path


def _args(records, init_dir, out, *extra):
    return ["--records", str(records), "--model", str(init_dir), "--output", str(out), "--lr", "1e-3",
            "--warmup-steps", "1", "--batch-size", "2", "--grad-accum", "2", "--device", "cpu", "--no-progress-bar",
            "--num-threads", "1", "--logger", "none", "--no-plot", *extra]


@pytest.fixture(scope="module")
def three_checkpoints(records_file, init_dir, tmp_path_factory):
    """A finished 4-step run that kept checkpoint-1..4 (the source folder is copied by each test)."""
    out = tmp_path_factory.mktemp("ckpts") / "run"
    train_mod.main(_args(records_file, init_dir, out, "--save-every", "1", "--save-total-limit", "0"))
    assert [p.name for p in train_mod.list_checkpoints(out)] == [f"checkpoint-{i}" for i in (4, 3, 2, 1)]
    return out


def _copy(src, tmp_path):
    import shutil

    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


class _Payload:
    """Unpickling this calls ``open(path, "w")``: a file appears when the payload runs."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_planted_pickle_payload_in_trainer_state_does_not_run(three_checkpoints, records_file, init_dir, tmp_path):
    out = _copy(three_checkpoints, tmp_path)
    sentinel = tmp_path / "payload-ran"
    torch.save({"step": 4, "evil": _Payload(sentinel)}, out / "checkpoint-4" / train_mod.TRAINER_STATE)
    with pytest.raises(train_mod.UnsafeCheckpointError, match="refusing to load .*checkpoint-4"):
        train_mod.main(_args(records_file, init_dir, out, "--resume"))
    assert not sentinel.exists()


def test_latest_marker_outside_the_output_is_refused(three_checkpoints, records_file, init_dir, tmp_path):
    out = _copy(three_checkpoints, tmp_path)
    for bad in ("../x", "/etc", "..", "a/b"):
        (out / "latest").write_text(bad)
        with pytest.raises(ValueError, match="refusing to follow it"):
            train_mod.latest_checkpoint(out)
    (out / "latest").write_text("../x")
    with pytest.raises(ValueError, match="not a checkpoint folder inside"):
        train_mod.main(_args(records_file, init_dir, out, "--resume"))


def test_dangling_latest_falls_back_to_the_newest_loadable_checkpoint(three_checkpoints, records_file, init_dir,
                                                                       tmp_path, caplog):
    out = _copy(three_checkpoints, tmp_path)
    (out / "latest").write_text("checkpoint-9")  # gone
    (out / "checkpoint-4" / train_mod.TRAINER_STATE).write_bytes(b"PK\x03\x04 torn")  # unreadable
    ckpt, state = train_mod.find_resume_checkpoint(out)
    assert ckpt.name == "checkpoint-3" and state["step"] == 3
    with caplog.at_level(logging.INFO, logger="spa_reward.progress.train"):
        result = train_mod.main(_args(records_file, init_dir, out, "--resume", "--epochs", "2"))
    assert "resumed from" in caplog.text and "checkpoint-3 at step 3" in caplog.text
    assert result["step"] == 8
    hist = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist if "train/loss" in h] == list(range(1, 9))  # steps 1-3 kept, not restarted


def test_resume_never_starts_fresh_over_checkpoints(three_checkpoints, records_file, init_dir, tmp_path):
    out = _copy(three_checkpoints, tmp_path)
    for ckpt in train_mod.list_checkpoints(out):
        (ckpt / train_mod.TRAINER_STATE).write_bytes(b"garbage")
    with pytest.raises(SystemExit, match="none can be loaded") as info:
        train_mod.main(_args(records_file, init_dir, out, "--resume"))
    for i in (1, 2, 3, 4):
        assert f"checkpoint-{i}" in str(info.value)
    assert len(train_mod.list_checkpoints(out)) == 4  # nothing rotated away


def test_trainer_state_is_plain_data(three_checkpoints):
    state = torch.load(three_checkpoints / "checkpoint-4" / train_mod.TRAINER_STATE, weights_only=True)
    assert state["step"] == 4 and "optimizer" in state and "rng" in state


def test_non_empty_output_needs_resume_or_overwrite(three_checkpoints, records_file, init_dir, tmp_path):
    out = _copy(three_checkpoints, tmp_path)
    with pytest.raises(SystemExit, match="is not empty.*--resume.*--overwrite"):
        train_mod.main(_args(records_file, init_dir, out))
    (out / "checkpoint-99").mkdir()
    (out / "notes.txt").write_text("mine")
    train_mod.main(_args(records_file, init_dir, out, "--overwrite", "--max-steps", "2", "--save-every", "1",
                         "--save-total-limit", "0"))
    assert [p.name for p in train_mod.list_checkpoints(out)] == ["checkpoint-2", "checkpoint-1"]
    assert (out / "notes.txt").read_text() == "mine"  # not ours: kept
    hist = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist if "train/loss" in h] == [1, 2]
    with pytest.raises(SystemExit, match="contradict"):
        train_mod.main(_args(records_file, init_dir, out, "--overwrite", "--resume"))


@pytest.mark.parametrize("flag,value", [
    ("--batch-size", "0"), ("--max-steps", "-1"), ("--lr", "nan"), ("--lr", "inf"), ("--lr", "-1e-3"),
    ("--eval-fraction", "1.5"), ("--warmup-steps", "-5"), ("--epochs", "0"), ("--max-length", "zero"),
    ("--max-grad-norm", "nan"), ("--num-threads", "-1"),
])
def test_bad_cli_values_are_argparse_errors_naming_the_flag(flag, value, capsys):
    with pytest.raises(SystemExit) as info:
        train_mod.build_parser().parse_args(["--records", "x.jsonl", "--output", "o", f"{flag}={value}"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and repr(value) in err


def test_env_failed_episodes_are_skipped_and_counted(init_dir, tmp_path, caplog):
    rng = random.Random(5)
    recs = [random_record(rng, i) for i in range(10)]
    for r in recs[:3]:
        r["extra"] = {"env_failed": True}
    recs[3]["extra"] = {"env_failed": False}
    write_records(tmp_path / "r.jsonl", recs)
    with caplog.at_level(logging.INFO, logger="spa_reward.progress.train"):
        train_mod.main(_args(tmp_path / "r.jsonl", init_dir, tmp_path / "a", "--max-steps", "1"))
    assert "skipped 3 env-failed episodes" in caplog.text
    run = json.loads((tmp_path / "a" / "run_config.json").read_text())
    assert run["data"]["train"] == 7 and run["data"]["env_failed_skipped"] == 3
    train_mod.main(_args(tmp_path / "r.jsonl", init_dir, tmp_path / "b", "--max-steps", "1", "--include-env-failures"))
    run = json.loads((tmp_path / "b" / "run_config.json").read_text())
    assert run["data"]["train"] == 10 and run["data"]["env_failed_skipped"] == 0


def test_run_shorter_than_its_warmup_is_warned(records_file, init_dir, tmp_path, caplog):
    args = _args(records_file, init_dir, tmp_path / "w", "--max-steps", "3")
    args[args.index("--warmup-steps") + 1] = "500"
    with caplog.at_level(logging.WARNING, logger="spa_reward.progress.train"):
        train_mod.main(args)
    assert "never leaves the warm-up" in caplog.text and "Lower --warmup-steps" in caplog.text
    run = json.loads((tmp_path / "w" / "run_config.json").read_text())
    assert len(run["warnings"]) == 1
    assert train_mod.warmup_warnings(100, 10, "log", 1e-3) == []
    assert "more than half" in train_mod.warmup_warnings(100, 60, "log", 1e-3)[0]
    assert train_mod.warmup_warnings(3, 500, "log", 3e-6)[0].count("ends at 7.") == 1  # the 7.8e-7


def test_example_set_matches_per_record_examples_at_4_bytes_a_token():
    rng = random.Random(2)
    recs = [validate_record(random_record(rng, i, n_turns=rng.randint(1, 6))) for i in range(40)]
    packed = ExampleSet()
    for r in recs:
        packed.append(r, max_length=14, keep_prompt=True)
    assert len(packed) == len(recs)
    for r, e in zip(recs, packed):
        ref = record_to_example(r, 14, True)
        assert e.input_ids.dtype == np.int32 and e.input_ids.tolist() == ref.input_ids.tolist()
        assert (e.turn_ends, e.kept, e.truncated, e.num_turns, e.reward) == (
            ref.turn_ends, ref.kept, ref.truncated, ref.num_turns, ref.reward)
    assert packed.num_truncated == sum(record_to_example(r, 14).truncated for r in recs) > 0
    assert packed[-1].episode_id == recs[-1].episode_id
    per_token = (packed.nbytes() - 8 * len(packed) * 3) / packed.num_tokens  # minus offsets/rewards
    assert per_token < 6


def test_each_rank_keeps_only_its_share(records_file):
    args = train_mod.build_parser().parse_args(["--records", str(records_file), "--output", "o"])
    shares = [train_mod.load_examples(args, 4096, True, world=3, rank=r) for r in range(3)]
    assert all(s["num_train"] == 16 for s in shares)
    ids = [e.episode_id for s in shares for e in s["train"]]
    assert sorted(ids) == sorted(f"e{i}" for i in range(16)) and len(ids) == len(set(ids))
    assert [len(s["train"]) for s in shares] == [6, 5, 5]
