"""Fixtures for the progress-estimator tests: a tiny tokenizer and a tiny saved estimator (no downloads)."""

from __future__ import annotations

import pytest
from progress_helpers import make_tiny_tokenizer, tiny_config

@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_estimator_dir(tmp_path_factory, tiny_tokenizer):
    """A randomly initialised tiny estimator saved with its tokenizer."""
    import torch

    from spa_reward.progress.model import ProgressEstimator

    torch.manual_seed(0)
    model = ProgressEstimator(tiny_config(max_length=4096))
    out = tmp_path_factory.mktemp("tiny_estimator")
    model.save_pretrained(out, tokenizer=tiny_tokenizer)
    return out
