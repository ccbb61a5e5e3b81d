from __future__ import annotations

import pytest

from tests.recipe.helpers import byte_tokenizer


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    return byte_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture
def toy_env(monkeypatch):
    """Register the toy env (registry + prompt text) in this process for one test."""
    import envs
    from envs import prompts

    monkeypatch.setitem(envs.ENV_REGISTRY, "toy", "tests.recipe.helpers:ToyEnv")
    monkeypatch.setitem(
        prompts.ENV_PROMPTS,
        "toy",
        prompts.EnvPrompt(role="You walk along a line.", actions="Actions: step forward | wait",
                          example=(("You are at 0.", "I walk.", "step forward"),),
                          example_last_observation="You are at 1."),
    )
    return "toy"
