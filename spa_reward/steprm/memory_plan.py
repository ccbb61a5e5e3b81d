"""Per-GPU memory plan of an online step-reward model, from its config alone (nothing downloaded).

``python -m spa_reward.steprm.memory_plan`` prints the README table: the implicit PRM (iStar, StepAgent implicit: a
causal LM) and the online progress estimator (SPA: the policy's backbone + a scalar head) at Qwen2.5 0.5B / 1.5B
/ 7B for N = 1, 2, 4, 8 ranks, and which settings fit a GPU. ``--config`` takes any Hugging Face config JSON.

What each rank holds (bytes per parameter P of the trained model; :func:`plan` is the code of this table):

==================  ====================  =======================================================================
part                N = 1 (one actor)     N >= 2 (FSDP2 group, ``spa_reward.steprm.sharded``)
==================  ====================  =======================================================================
master weights      4 P (fp32)            4 P / N (fp32 shards)
gradients           4 P (fp32)            4 P / N (reduce-scattered in fp32)
AdamW m and v       8 P (fp32)            8 P / N
serving copy        4 P (fp32 copy)       2 P / N (bf16 shards: what MixedPrecisionPolicy all-gathers anyway)
frozen reference    4 P (StepAgent only)  2 P / N (StepAgent only; iStar uses the rollout's log-probs)
bf16 weight casts   2 P (autocast cache)  2 bytes x (largest FSDP unit x 2 + the root unit): the all-gathered
                                          unit being computed and the one prefetched; 4 bytes x the largest
                                          unit for its unsharded fp32 gradient before the reduce-scatter
activations         the same for both: see below, at ``max_token_len`` tokens per micro-batch
==================  ====================  =======================================================================

Activations of one micro-batch of T tokens (``max_token_len``; bf16, gradient checkpointing on, as the recipe
sets): the checkpointed input of every layer (L x T x H x 2 bytes), the recomputed working set of one layer in the
backward pass (T x (6 H + 2 KV + 4 I) x 2 bytes x 2, with SDPA / flash attention: no T^2 term) and, for the
implicit PRM, the chunked log-probs of the taken tokens (``objectives.LOGIT_CHUNK_ELEMENTS`` fp32 logits, kept
about three times: logits, log-sum-exp, gradient). The CUDA context, NCCL buffers and allocator slack come on top
(``OVERHEAD_GB`` per GPU). These are estimates of the dominant terms, not a profiler's reading: the measured figures
for tiny models on CPU (``benchmarks/bench_steprm_sharded.py``) check the weight / gradient / optimiser terms.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any, Optional

GIB = 1024**3
OVERHEAD_GB = 2.0  # CUDA context + NCCL buffers + allocator slack per GPU (not computed)
DEFAULT_TOKENS = 16384  # max_token_len per micro-batch (verl's ppo_max_token_len_per_gpu scale)
LOGIT_CHUNK_ELEMENTS = 1 << 26  # as objectives.LOGIT_CHUNK_ELEMENTS (fp32 logits per chunk)

# Qwen2.5 decoder configs, as published with the models (the fields this plan reads)
QWEN25 = {
    "0.5B": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "1.5B": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "7B": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}
MODELS = ("implicit", "progress")


@dataclass(frozen=True)
class Params:
    """Parameter counts of a Qwen2-style decoder (q/k/v with bias, SwiGLU MLP, RMSNorm) and its FSDP units."""

    layer: int  # one decoder layer
    layers: int  # all decoder layers
    embed: int
    lm_head: int  # 0 when tied to the embedding
    norm: int
    head: int  # progress head (MLP H -> H -> 1); 0 for the implicit PRM

    @property
    def total(self) -> int:
        return self.layers + self.embed + self.lm_head + self.norm + self.head

    @property
    def largest_unit(self) -> int:
        """The largest unit FSDP all-gathers at once: a decoder layer, the embedding or the output layer (each
        wrapped on its own, :func:`spa_reward.steprm.sharded.shard_module`)."""
        return max(self.layer, self.embed, self.lm_head, self.head)


def count_params(cfg: dict[str, Any], model: str) -> Params:
    """``model``: ``implicit`` (the causal LM, trained whole) or ``progress`` (backbone + MLP head; the untied LM
    head is frozen and never run, so it is not counted)."""
    h, inter, n = int(cfg["hidden_size"]), int(cfg["intermediate_size"]), int(cfg["num_hidden_layers"])
    heads, kv_heads = int(cfg["num_attention_heads"]), int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
    kv = kv_heads * (h // heads)
    v = int(cfg["vocab_size"])
    layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * inter + 2 * h
    tied = bool(cfg.get("tie_word_embeddings", False))
    if model == "implicit":
        return Params(layer, n * layer, v * h, 0 if tied else v * h, h, 0)
    if model == "progress":
        return Params(layer, n * layer, v * h, 0, h, h * h + h + h + 1)
    raise ValueError(f"model={model!r} is not one of {MODELS}")


def activation_bytes(cfg: dict[str, Any], model: str, tokens: int) -> int:
    """Activations of one micro-batch of ``tokens`` tokens (see the module docstring)."""
    h, inter, n = int(cfg["hidden_size"]), int(cfg["intermediate_size"]), int(cfg["num_hidden_layers"])
    heads, kv_heads = int(cfg["num_attention_heads"]), int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
    kv = kv_heads * (h // heads)
    checkpoints = n * tokens * h * 2
    layer = tokens * (6 * h + 2 * kv + 4 * inter) * 2 * 2
    logits = 3 * 4 * LOGIT_CHUNK_ELEMENTS if model == "implicit" else 0
    return checkpoints + layer + logits


def plan(cfg: dict[str, Any], model: str, ranks: int, tokens: int = DEFAULT_TOKENS, reference: bool = False
         ) -> dict[str, float]:
    """GiB per GPU of each part (module docstring) and ``total`` (with ``OVERHEAD_GB``) for ``ranks`` ranks;
    ``reference``: a frozen reference copy (StepAgent implicit)."""
    if ranks < 1:
        raise ValueError(f"ranks={ranks} must be >= 1")
    p = count_params(cfg, model)
    P = p.total
    if ranks == 1:
        parts = {"weights": 4 * P, "grads": 4 * P, "adam": 8 * P, "serving": 4 * P,
                 "reference": 4 * P if reference else 0, "gathered": 2 * P}
    else:
        parts = {"weights": 4 * P / ranks, "grads": 4 * P / ranks, "adam": 8 * P / ranks, "serving": 2 * P / ranks,
                 "reference": 2 * P / ranks if reference else 0,
                 "gathered": 2 * (2 * p.largest_unit + p.norm) + 4 * p.largest_unit}
    parts["activations"] = activation_bytes(cfg, model, tokens)
    out = {k: v / GIB for k, v in parts.items()}
    out["params_b"] = P / 1e9
    out["total"] = sum(out[k] for k in parts) + OVERHEAD_GB
    return out


def table(sizes=("0.5B", "1.5B", "7B"), ranks=(1, 2, 4, 8), tokens: int = DEFAULT_TOKENS,
          gpu_gb: float = 80.0) -> str:
    """The README table (markdown): GiB per GPU, ``*`` where the total exceeds ``gpu_gb``."""
    rows = ["| model | size | params | N | weights + grads + AdamW | serving | bf16 gathered | activations "
            f"({tokens} tokens) | total per GPU |", "|---|---|---|---|---|---|---|---|---|"]
    for model in MODELS:
        for size in sizes:
            for n in ranks:
                r = plan(QWEN25[size], model, n, tokens)
                over = " (over)" if r["total"] > gpu_gb else ""
                rows.append(f"| {model} | {size} | {r['params_b']:.2f}B | {n} | {r['weights'] + r['grads'] + r['adam']:.1f} "
                            f"| {r['serving']:.1f} | {r['gathered']:.1f} | {r['activations']:.1f} "
                            f"| **{r['total']:.1f}**{over} |")
    return "\n".join(rows)


def smallest_fit(cfg: dict[str, Any], model: str, gpu_gb: float, tokens: int = DEFAULT_TOKENS,
                 reference: bool = False, ranks=(1, 2, 4, 8, 16)) -> Optional[int]:
    """The fewest ranks whose plan fits ``gpu_gb`` per GPU, None if none of ``ranks`` does."""
    for n in ranks:
        if plan(cfg, model, n, tokens, reference)["total"] <= gpu_gb:
            return n
    return None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help="max_token_len per micro-batch")
    ap.add_argument("--gpu-gb", type=float, default=80.0, help="GPU memory (GiB) a plan must fit")
    ap.add_argument("--config", help="a Hugging Face config.json to plan instead of the Qwen2.5 table")
    ap.add_argument("--model", choices=MODELS, default="implicit")
    args = ap.parse_args(argv)
    if args.tokens < 1 or args.gpu_gb <= 0:
        ap.error(f"--tokens={args.tokens} must be >= 1 and --gpu-gb={args.gpu_gb} > 0")
    if args.config:
        with open(args.config, encoding="utf-8") as f:
            cfg = json.load(f)
        for n in (1, 2, 4, 8):
            r = plan(cfg, args.model, n, args.tokens)
            print(f"N={n}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()))
        return
    print(table(tokens=args.tokens, gpu_gb=args.gpu_gb))
    for size in QWEN25:
        for model in MODELS:
            n = smallest_fit(QWEN25[size], model, args.gpu_gb, args.tokens)
            print(f"{model} {size}: fits {args.gpu_gb:.0f} GiB from N={n}" if n else
                  f"{model} {size}: does not fit {args.gpu_gb:.0f} GiB at N <= 16")


if __name__ == "__main__":
    main()
