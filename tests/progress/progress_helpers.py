"""Helpers shared by the progress-estimator tests (imported by name: keep this file name unique)."""

from __future__ import annotations

import random

VOCAB = 64  # token ids 0..63; the tiny tokenizer has exactly these


def make_tiny_tokenizer(n_words: int = VOCAB - 2, shift: int = 0):
    """A word-level fast tokenizer with ``n_words + 2`` tokens; ``shift`` rotates the word ids (a different vocab)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": (i + shift) % n_words for i in range(n_words)}
    vocab["[UNK]"] = n_words
    vocab["[PAD]"] = n_words + 1
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


def tiny_config(head: str = "mlp", lora_r: int = 0, max_length: int = 4096, **kw):
    from spa_reward.progress.model import ProgressEstimatorConfig, build_tiny_backbone_config

    return ProgressEstimatorConfig(
        backbone_config=build_tiny_backbone_config(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4),
        head=head,
        lora_r=lora_r,
        max_length=max_length,
        tokenizer="tiny-word-level",
        **kw,
    )


def random_record(rng: random.Random, index: int, n_turns: int | None = None, prompt_len: int | None = None) -> dict:
    """A valid record dict with random tokens < VOCAB."""
    prompt_len = rng.randint(2, 6) if prompt_len is None else prompt_len
    ids = [rng.randrange(VOCAB) for _ in range(prompt_len)]
    spans = []
    for t in range(rng.randint(1, 5) if n_turns is None else n_turns):
        if t:
            ids += [rng.randrange(VOCAB) for _ in range(rng.randint(1, 4))]
        start = len(ids)
        ids += [rng.randrange(VOCAB) for _ in range(rng.randint(1, 5))]
        spans.append([start, len(ids)])
    ids += [rng.randrange(VOCAB) for _ in range(rng.randint(0, 3))]
    return {
        "format_version": 1,
        "uid": f"g{index // 4}",
        "episode_id": f"e{index}",
        "env_name": "test",
        "task_id": str(index // 4),
        "tokenizer": "tiny-word-level",
        "input_ids": ids,
        "prompt_length": prompt_len,
        "turn_spans": spans,
        "executable": [rng.random() < 0.7 for _ in spans],
        "reward": round(rng.random(), 3),
        "won": rng.random() < 0.5,
        "actions": [f"act {t}" for t in range(len(spans))],
    }
