"""The CPU tour (recipe/spa/tour.py, examples/cpu_tour.sh): pieces fast, the whole run under ``slow``."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from recipe.spa import tour

REPO = Path(__file__).resolve().parents[2]


def test_perturbed_action_lists():
    expert = ["search[red shoes]", "click[Next >]", "click[B01]", "click[red]", "click[9]", "click[Buy Now]"]
    page = ["search", "click[Next >]", "click[B07]", "click[B01]", "click[B09]", "click[Back to Search]"]
    assert tour.variant_actions("expert", expert, page) == expert
    assert tour.variant_actions("no_options", expert, page) == expert[:3] + ["click[Buy Now]"]
    assert tour.variant_actions("stop_early", expert, page) == expert[:-1]
    other = tour.variant_actions("other_product", expert, page)
    assert other[0] == "search[red shoes]" and other[1] == "click[B09]" and other[2:] == expert[3:]
    with pytest.raises(ValueError, match="unknown variant"):
        tour.variant_actions("nope", expert, page)


def test_record_spans_are_the_assistant_turns(tmp_path):
    msgs = [{"role": "system", "content": "you shop"}, {"role": "user", "content": "find red shoes"},
            {"role": "assistant", "content": "Thought: go\nAction: search[red shoes]"},
            {"role": "user", "content": "results B01 B02"},
            {"role": "assistant", "content": "Thought: buy\nAction: click[B01]"}]
    tok = tour.build_tokenizer([m["content"] for m in msgs], tmp_path / "tok")
    ep = {"task_id": "7", "variant": "expert", "messages": msgs, "executable": [True, True], "reward": 1.0,
          "won": True, "actions": ["search[red shoes]", "click[B01]"], "done": True, "anchors": ["a", "b"],
          "score": 1.0}
    rec = tour.episode_record(ep, "webshop", tok, str(tmp_path / "tok"))
    from spa_reward.records import validate_record

    r = validate_record(rec)
    texts = [tok.decode(r.input_ids[a:b]) for a, b in r.turn_spans]
    assert texts[0].startswith("Thought : go") and texts[0].endswith("<|end|>")
    assert "click [ B01 ]" in texts[1] and "results" not in texts[1]
    assert "find red shoes" in tok.decode(r.input_ids[: r.prompt_length])
    assert tok.decode(r.input_ids[: r.prompt_length]).endswith("<|assistant|>")


def test_refuses_a_foreign_non_empty_output(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="not a previous tour"):
        tour.main(["--output", str(tmp_path), "--data-dir", str(tmp_path)])
    assert (tmp_path / "mine.txt").read_text() == "keep me"


@pytest.mark.slow  # a few minutes on 2 cores: real WebShop episodes, estimator training, advantages
def test_cpu_tour_end_to_end(tmp_path, webshop_data):
    data = webshop_data
    out = tmp_path / "tour"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["bash", str(REPO / "examples" / "cpu_tour.sh"), "webshop", "--output", str(out),
                           "--data-dir", str(data)], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["estimator"]["eval/pearson"] > 0.5, summary["estimator"]
    assert (out / "attribution.png").stat().st_size > 5000
    adv = summary["advantages"]
    assert adv["expert"]["R"] > adv["stop_early"]["R"] == 0.0
    for name in ("grpo", "gigpo", "spa"):
        assert adv["expert"][f"{name}_last"] > adv["stop_early"][f"{name}_last"], name
    assert "eval Pearson" in proc.stdout and "| expert |" in proc.stdout
    records = (out / "records" / "webshop.jsonl").read_text().splitlines()
    assert len(records) == sum(row["episodes"] for row in adv.values())
