"""The attribution picture: plot_attribution and the `python -m spa_reward.viz` CLI."""

from __future__ import annotations

import random

import pytest
from progress_helpers import random_record

from spa_reward.records import CONTRIBUTIONS_KEY, write_records
from spa_reward.viz import main, plot_attribution

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_attribution_writes_png(tmp_path):
    out = plot_attribution(
        [0.1, -0.2, float("nan"), 0.6], [True, False, True, True],
        ["search[red shoes]", "click[nonexistent button with a very long label]", "think", "click[buy now]"],
        alpha=1.0, beta=0.5, reward=0.5, out_path=tmp_path / "sub" / "t.png",
    )
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 2000
    with pytest.raises(ValueError, match="executable"):
        plot_attribution([0.1], [True, False], None, out_path=tmp_path / "x.png")


def test_cli_with_stored_contributions_and_with_checkpoint(tmp_path, tiny_estimator_dir):
    rng = random.Random(0)
    recs = [random_record(rng, i) for i in range(3)]
    recs[1]["extra"] = {CONTRIBUTIONS_KEY: [0.25] * len(recs[1]["turn_spans"])}
    write_records(tmp_path / "r.jsonl", recs)
    out = main(["--records", str(tmp_path / "r.jsonl"), "--index", "1", "--out", str(tmp_path / "stored.png")])
    assert out.read_bytes().startswith(PNG_MAGIC)
    out = main(["--records", str(tmp_path / "r.jsonl"), "--index", "2", "--checkpoint", str(tiny_estimator_dir),
                "--device", "cpu", "--alpha", "2", "--beta", "0.1", "--out", str(tmp_path / "scored.png")])
    assert out.stat().st_size > 2000
    with pytest.raises(SystemExit, match="no extra"):
        main(["--records", str(tmp_path / "r.jsonl"), "--index", "0", "--out", str(tmp_path / "none.png")])
    with pytest.raises(SystemExit, match="past the last record"):
        main(["--records", str(tmp_path / "r.jsonl"), "--index", "9", "--out", str(tmp_path / "none.png")])
