"""Per-GPU memory plan of an online step-reward model, from its config alone (nothing downloaded).

``python -m spa_reward.steprm.memory_plan`` prints the README table: the implicit PRM (iStar, StepAgent implicit: a
causal LM) and the online progress estimator (SPA: the policy's backbone + a scalar head) at Qwen2.5 0.5B / 1.5B
/ 7B for N = 1, 2, 4, 8 ranks, and which settings fit a GPU. ``--config`` takes any Hugging Face config JSON.

What each rank holds (bytes per parameter P of the trained model; :func:`plan` is the code of this table):

==================  ====================  =======================================================================
part                N = 1 (one actor)     N >= 2 (FSDP2 group, ``spa_reward.steprm.sharded``)
==================  ====================  =======================================================================
master weights      4 P (fp32)            4 P / N (fp32 shards; plus a frozen untied LM head of the estimator)
gradients           4 P (fp32)            4 P / N (reduce-scattered in fp32)
AdamW m and v       8 P (fp32)            8 P / N
serving copy        4 P (fp32 copy)       none (one call at a time: the group scores with the trained weights)
frozen reference    4 P (StepAgent only)  2 P / N (bf16 shards; StepAgent only: iStar uses the rollout's log-probs)
bf16 weights        2 P (autocast's       gathered units (bf16): the root unit (output layer, final norm, a tied
                    cached casts)         embedding) from the forward to the end of the backward, the largest
                                          other unit (a decoder layer, an untied embedding) while it runs and one
                                          prefetched layer; the trained ones also hold a bf16 gradient and its
                                          fp32 copy for the reduce-scatter (6 more bytes per parameter)
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

from spa_reward.steprm.objectives import LOGIT_CHUNK_ELEMENTS
from spa_reward.steprm.service import StepRMSettings

GIB = 1024**3
OVERHEAD_GB = 2.0  # CUDA context + NCCL buffers + allocator slack per GPU (not computed)
DEFAULT_TOKENS = StepRMSettings.max_token_len  # max_token_len per micro-batch (the recipe's default)
GPU_GIB = 78.0  # what an 80 GB H100 gives a process
HEADROOM = 0.9  # a plan "fits" when its estimate is within 90% of the GPU

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
    lm_head: int  # the untied output layer; 0 when tied to the embedding
    norm: int
    head: int  # progress head (MLP H -> H -> 1); 0 for the implicit PRM
    lm_head_trained: bool  # False: the progress estimator's untied LM head, frozen and never run

    @property
    def total(self) -> int:
        """Trained parameters (P)."""
        return self.layers + self.embed + (self.lm_head if self.lm_head_trained else 0) + self.norm + self.head

    @property
    def frozen(self) -> int:
        return 0 if self.lm_head_trained else self.lm_head

    @property
    def root_unit(self) -> int:
        """The FSDP root of :func:`spa_reward.steprm.sharded.shard_module`: output layer, final norm and a tied
        embedding."""
        return self.norm + (self.lm_head if self.lm_head else self.embed)

    @property
    def largest_other_unit(self) -> int:
        """A decoder layer or an untied embedding (the head is its own, small, unit)."""
        return max(self.layer, self.embed if self.lm_head else 0, self.head)


def count_params(cfg: dict[str, Any], model: str) -> Params:
    """``model``: ``implicit`` (the causal LM, trained whole) or ``progress`` (backbone + MLP head; an untied LM
    head is frozen and never run)."""
    h, inter, n = int(cfg["hidden_size"]), int(cfg["intermediate_size"]), int(cfg["num_hidden_layers"])
    heads, kv_heads = int(cfg["num_attention_heads"]), int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
    kv = kv_heads * (h // heads)
    v = int(cfg["vocab_size"])
    layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * inter + 2 * h
    lm_head = 0 if cfg.get("tie_word_embeddings", False) else v * h
    if model == "implicit":
        return Params(layer, n * layer, v * h, lm_head, h, 0, True)
    if model == "progress":
        return Params(layer, n * layer, v * h, lm_head, h, h * h + h + h + 1, False)
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
        parts = {"weights": 4 * (P + p.frozen), "grads": 4 * P, "adam": 8 * P, "serving": 4 * (P + p.frozen),
                 "reference": 4 * P if reference else 0, "gathered": 2 * P}
    else:
        root_trained = p.root_unit - p.frozen
        parts = {"weights": 4 * (P + p.frozen) / ranks, "grads": 4 * P / ranks, "adam": 8 * P / ranks, "serving": 0,
                 "reference": 2 * P / ranks if reference else 0,
                 "gathered": 2 * (p.root_unit + p.largest_other_unit + p.layer) + 6 * (root_trained + p.largest_other_unit)}
    parts["activations"] = activation_bytes(cfg, model, tokens)
    out = {k: v / GIB for k, v in parts.items()}
    out["params_b"] = P / 1e9
    out["total"] = sum(out[k] for k in parts) + OVERHEAD_GB
    return out


def table(sizes=("0.5B", "1.5B", "7B"), ranks=(1, 2, 4, 8), tokens: int = DEFAULT_TOKENS,
          gpu_gb: float = GPU_GIB) -> str:
    """The README table (markdown): GiB per GPU, ``*`` where the total exceeds ``gpu_gb``."""
    rows = ["| model | size | params | N | weights + grads + AdamW | serving copy | bf16 weights | activations "
            f"({tokens} tokens) | total per GPU |", "|---|---|---|---|---|---|---|---|---|"]
    for model in MODELS:
        for size in sizes:
            for n in ranks:
                r = plan(QWEN25[size], model, n, tokens)
                over = f" (> {gpu_gb:g})" if r["total"] > gpu_gb else ""
                rows.append(f"| {model} | {size} | {r['params_b']:.2f}B | {n} | {r['weights'] + r['grads'] + r['adam']:.1f} "
                            f"| {r['serving']:.1f} | {r['gathered']:.1f} | {r['activations']:.1f} "
                            f"| **{r['total']:.1f}**{over} |")
    return "\n".join(rows)


def smallest_fit(cfg: dict[str, Any], model: str, gpu_gb: float, tokens: int = DEFAULT_TOKENS,
                 reference: bool = False, ranks=(1, 2, 4, 8, 16), headroom: float = HEADROOM) -> Optional[int]:
    """The fewest ranks whose plan fits ``headroom x gpu_gb`` per GPU (the plan is an estimate), None if none of
    ``ranks`` does."""
    for n in ranks:
        if plan(cfg, model, n, tokens, reference)["total"] <= headroom * gpu_gb:
            return n
    return None


def held_bytes(model) -> dict[str, int]:
    """Bytes a built :class:`~spa_reward.steprm.service.StepRewardModel` (or one rank of the sharded model: its
    shards) holds between calls: ``weights``, ``adam`` (AdamW's m and v), ``serving`` (a separate serving copy),
    ``reference`` (a frozen reference copy). Gradients exist only inside an update (peak memory shows them)."""
    import torch

    def size(t) -> int:
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    params = list(model.model.parameters())
    states = model.optimizer.state.values() if model.optimizer is not None else []
    return {"weights": sum(size(p) for p in params),
            "adam": sum(size(v) for st in states for v in st.values() if torch.is_tensor(v) and v.dim()),
            "serving": 0 if model.serving is model.model else sum(size(p) for p in model.serving.parameters()),
            "reference": 0 if model.reference is None else sum(size(p) for p in model.reference.parameters())}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help="max_token_len per micro-batch")
    ap.add_argument("--gpu-gb", type=float, default=GPU_GIB, help="GPU memory (GiB) a plan must fit")
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
            print(f"{model} {size}: fits {HEADROOM:.0%} of {args.gpu_gb:g} GiB from N={n}" if n else
                  f"{model} {size}: does not fit {HEADROOM:.0%} of {args.gpu_gb:g} GiB at N <= 16")


if __name__ == "__main__":
    main()
