"""How many episodes a validation plays: ``data.val_tasks`` (``VAL_TASKS``) is a fixed, seeded subset of the
validation file, the same for every run; verl's ``_validate`` plays the whole validation dataloader."""

from __future__ import annotations

import pytest

from spa_reward.trainer import VAL_SUBSET_SEED, validation_subset
from tests.recipe.helpers import trainer_config
from tests.recipe.test_examples import overrides


def test_validation_subset_by_hand():
    import numpy as np

    keep = validation_subset(10, 4)
    assert keep == sorted(np.random.default_rng(VAL_SUBSET_SEED).choice(10, size=4, replace=False).tolist())
    assert len(set(keep)) == 4 and all(0 <= i < 10 for i in keep)
    assert validation_subset(10, 4) == keep  # fixed
    assert validation_subset(10, 10) is None and validation_subset(10, 50) is None and validation_subset(10, None) is None


def _val_task_ids(tmp_path, tokenizer, *extra):
    """The task ids verl's validation dataloader yields, built by the spa trainer mode's real _init_dataloader."""
    from envs.prepare import write_parquet
    from spa_reward.trainer import SpaTrainer

    rows = [{"data_source": "spa_rl/toy", "agent_name": "env_agent",
             "prompt": [{"role": "user", "content": f"toy task t{i}"}], "ability": "agent",
             "reward_model": {"style": "env", "ground_truth": f"t{i}"},
             "extra_info": {"index": i, "env_name": "toy", "task_id": f"t{i}", "split": "test", "task_type": "x"}}
            for i in range(12)]
    path = write_parquet(rows, tmp_path / "toy_test.parquet")
    trainer = SpaTrainer.__new__(SpaTrainer)
    trainer.config = trainer_config(f"data.train_files={path}", f"data.val_files={path}", "data.train_batch_size=4",
                                    "data.dataloader_num_workers=0", *extra)
    trainer.tokenizer, trainer.processor, trainer.parameter_sync_step = tokenizer, None, 1  # what __init__ sets
    trainer._init_dataloader()
    return [t for batch in trainer.val_dataloader for t in (e["task_id"] for e in batch["extra_info"])]


def test_a_validation_plays_the_fixed_subset_whatever_the_run_seed(tmp_path, tokenizer):
    first = _val_task_ids(tmp_path, tokenizer, "data.val_tasks=5", "data.val_batch_size=2", "data.seed=1")
    assert first == [f"t{i}" for i in validation_subset(12, 5)]  # in file order, every batch of 2 played
    assert _val_task_ids(tmp_path, tokenizer, "data.val_tasks=5", "data.val_batch_size=5", "data.seed=7") == first
    assert len(_val_task_ids(tmp_path, tokenizer, "data.val_tasks=50", "data.val_batch_size=5")) == 12
    assert len(_val_task_ids(tmp_path, tokenizer, "data.val_batch_size=5")) == 12  # null: the whole file


def test_scripts_and_checks_set_the_validation_size():
    from spa_reward.config_check import value_problems

    rl = overrides("rl_grpo.sh", "webshop", VAL_TASKS="64")
    assert rl["data.val_tasks"] == "64" and rl["data.val_batch_size"] == "64"
    assert overrides("eval.sh", "webshop", MODEL="/m")["data.val_tasks"] == "null"  # evaluation plays every task
    assert overrides("collect.sh", "webshop", SFT_MODEL="/m")["data.val_tasks"] == "null"
    problems = value_problems(trainer_config("data.val_tasks=0"))
    assert any("data.val_tasks=0 must be an integer >= 1" in p for p in problems)
    assert value_problems(trainer_config("data.val_tasks=128")) == []


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from tests.recipe.helpers import byte_tokenizer

    return byte_tokenizer(tmp_path_factory.mktemp("tok"))
