"""Tiny models and synthetic episodes for the step-reward model tests (nothing downloaded)."""

from __future__ import annotations

import pytest

from spa_reward.progress.model import build_tiny_backbone_config
from spa_reward.progress.synthetic import SyntheticTaskConfig, make_synthetic_records

# every progress action is worth 1 each time: the decisive turns are exactly the progress turns
TASK = SyntheticTaskConfig(value_range=(1.0, 1.0), max_turns=6, count_once=False)


def tiny_backbone(vocab_size: int = TASK.vocab_size, hidden: int = 32, layers: int = 1) -> dict:
    return build_tiny_backbone_config(vocab_size=vocab_size, hidden_size=hidden, num_layers=layers, num_heads=2)


def synthetic_items(n: int, seed: int, group_size: int = 8, success_at: float = 2.0, task=TASK) -> tuple[list, list]:
    """(service items, records): ``n`` synthetic episodes in uid groups of ``group_size``; success = R >= success_at."""
    recs = make_synthetic_records(n, seed=seed, cfg=task, start_index=n * seed)
    items = [{"input_ids": r.input_ids, "prompt_length": r.prompt_length, "turn_spans": r.turn_spans,
              "reward": r.reward, "uid": f"{seed}-{i // group_size}", "success": r.reward >= success_at}
             for i, r in enumerate(recs)]
    return items, recs


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray (2 CPUs) for the module's actor tests."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()
