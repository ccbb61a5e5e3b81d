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


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory):
    """A randomly initialised tiny estimator to start training from (``--model``)."""
    import torch

    from spa_reward.progress.model import ProgressEstimator

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("init")
    ProgressEstimator(tiny_config()).save_pretrained(out)
    return out


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models run fastest on one thread, and on a shared machine extra OpenMP threads only spin."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
