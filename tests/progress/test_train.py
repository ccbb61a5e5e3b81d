"""Training CLI: outputs, verl tracking, evaluation metrics, truncation bookkeeping, exact resume."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from progress_helpers import random_record, tiny_config

from spa_reward.progress import train as train_mod
from spa_reward.progress.model import ProgressEstimator
from spa_reward.records import write_records


@pytest.fixture(scope="module")
def record_files(tmp_path_factory):
    rng = random.Random(0)
    d = tmp_path_factory.mktemp("records")
    write_records(d / "train.jsonl", [random_record(rng, i) for i in range(24)])
    write_records(d / "eval.parquet", [random_record(rng, 100 + i) for i in range(8)])
    return d


def _args(record_files, init_dir, out, *extra):
    return [
        "--records", str(record_files / "train.jsonl"), "--eval-records", str(record_files / "eval.parquet"),
        "--model", str(init_dir), "--output", str(out), "--lr", "1e-3", "--warmup-steps", "2",
        "--batch-size", "2", "--grad-accum", "2", "--device", "cpu", "--no-progress-bar", "--num-threads", "1",
        *extra,
    ]


def test_cli_writes_estimator_checkpoints_logs_and_plot(record_files, init_dir, tmp_path, capsys):
    out = tmp_path / "run"
    result = train_mod.main(_args(record_files, init_dir, out, "--eval-every", "3", "--save-every", "2", "--logger", "console"))
    assert result["step"] == 6  # 24 records / (2 x 2)
    for name in ("config.json", "head.safetensors", "metrics.json", "history.jsonl", "learning_curve.png", "run_config.json"):
        assert (out / name).is_file(), name
    assert (out / "learning_curve.png").stat().st_size > 1000
    assert (out / "latest").read_text() == "checkpoint-6"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]  # save-total-limit 2
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("eval/mse", "eval/pearson", "eval/spearman", "eval/mean_abs_c"):
        assert key in metrics
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history if "eval/mse" in h] == [3, 6]
    assert all(np.isfinite(h["train/loss"]) for h in history if "train/loss" in h)
    # verl's Tracking console backend printed the metrics
    assert "train/loss" in capsys.readouterr().out
    # the final estimator loads and remembers the training truncation settings
    est = ProgressEstimator.from_pretrained(out)
    assert est.config.max_length == 4096 and est.config.keep_prompt_on_truncation


def test_resume_continues_exactly(record_files, init_dir, tmp_path):
    full = tmp_path / "full"
    train_mod.main(_args(record_files, init_dir, full, "--logger", "none", "--epochs", "2"))
    part = tmp_path / "part"
    train_mod.main(_args(record_files, init_dir, part, "--logger", "none", "--epochs", "2", "--max-steps", "4"))
    assert (part / "latest").read_text() == "checkpoint-4"
    result = train_mod.main(_args(record_files, init_dir, part, "--logger", "none", "--epochs", "2", "--resume"))
    assert result["step"] == 12
    a = ProgressEstimator.from_pretrained(full)
    b = ProgressEstimator.from_pretrained(part)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5, msg=na)
    hist = [json.loads(line) for line in (part / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist if "train/loss" in h] == list(range(1, 5)) + list(range(1, 13))[4:]


def test_truncation_is_applied_and_recorded(record_files, init_dir, tmp_path):
    out = tmp_path / "short"
    train_mod.main(_args(record_files, init_dir, out, "--logger", "none", "--max-length", "12", "--max-steps", "1"))
    cfg = json.loads((out / "run_config.json").read_text())
    assert cfg["data"]["truncated"] > 0 and cfg["data"]["dropped_turns"] > 0
    assert ProgressEstimator.from_pretrained(out).config.max_length == 12


def test_new_estimator_from_hf_backbone_with_lora(record_files, tmp_path, tiny_tokenizer):
    pytest.importorskip("peft")
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    backbone_dir = tmp_path / "hf"
    cfg = AutoConfig.for_model(**tiny_config().backbone_config)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(backbone_dir)
    tiny_tokenizer.save_pretrained(backbone_dir)
    out = tmp_path / "lora"
    train_mod.main([
        "--records", str(record_files / "train.jsonl"), "--eval-fraction", "0.25", "--model", str(backbone_dir),
        "--output", str(out), "--head", "linear", "--lora-r", "4", "--lr", "1e-3", "--max-steps", "2",
        "--save-every", "1", "--logger", "none", "--no-progress-bar", "--device", "cpu",
    ])
    latest = out / (out / "latest").read_text()
    assert (latest / "adapter").is_dir()  # checkpoints keep the adapter separate (resumable)
    assert not (out / "adapter").exists()  # the final estimator has it merged
    assert (out / "tokenizer").is_dir()
    est = ProgressEstimator.from_pretrained(out)
    assert est.config.head == "linear" and not est.has_lora
    run = json.loads((out / "run_config.json").read_text())
    assert run["data"]["eval"] > 0 and run["schedule"]["effective_batch"] == 16


def test_token_ids_outside_the_backbone_vocab_fail_clearly(init_dir, tmp_path):
    rng = random.Random(3)
    rec = random_record(rng, 0)
    rec["input_ids"][0] = 5000
    write_records(tmp_path / "bad.jsonl", [rec])
    with pytest.raises(SystemExit, match="token id 5000"):
        train_mod.main(["--records", str(tmp_path / "bad.jsonl"), "--model", str(init_dir), "--output", str(tmp_path / "o"),
                        "--logger", "none", "--device", "cpu"])


def test_metrics_helpers():
    assert train_mod.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert train_mod.spearman([1, 2, 3, 4], [1, 4, 9, 100]) == pytest.approx(1.0)
    assert train_mod.spearman([1, 2, 2, 3], [3, 2, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(train_mod.pearson([1, 1], [1, 2]))
    m = train_mod.regression_metrics([[0.5, 0.5], [0.0]], [1.0, 0.5])
    assert m["eval/mse"] == pytest.approx(0.125) and m["eval/mean_abs_c"] == pytest.approx(1 / 3)
    assert train_mod.warmup_factor(0, 0, "log") == 1.0
    assert 0 < train_mod.warmup_factor(0, 500, "log") < train_mod.warmup_factor(100, 500, "log") < 1.0
    assert train_mod.warmup_factor(499, 500, "log") == pytest.approx(1.0)
    assert train_mod.warmup_factor(9, 10, "linear") == 1.0 and train_mod.warmup_factor(0, 10, "linear") == 0.1


def test_help_documents_paper_defaults(capsys):
    with pytest.raises(SystemExit):
        train_mod.main(["--help"])
    text = capsys.readouterr().out
    for fragment in ("3e-06", "0.01", "500", "released code", "4096"):
        assert fragment in text


@pytest.mark.slow  # two extra processes each import torch + transformers (~15 s)
def test_torchrun_ddp_on_cpu(record_files, init_dir, tmp_path):
    """The WORLD_SIZE > 1 path (DistributedDataParallel, gloo on CPU): two ranks train, rank 0 saves."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "spa_reward.progress.train", *_args(record_files, init_dir, out, "--logger", "none", "--save-every", "1")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((out / "run_config.json").read_text())
    assert run["schedule"]["world_size"] == 2 and run["schedule"]["total_steps"] == 3  # 12 per rank / (2 x 2)
    assert (out / "latest").read_text() == "checkpoint-3"
    assert json.loads((out / "metrics.json").read_text())["eval/n"] == 8
