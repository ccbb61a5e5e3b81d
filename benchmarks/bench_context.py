"""Context cost of the two layouts: full history (one packed row per episode) vs window (one row per step, the
last k steps in its prompt), on real expert episodes of the three environments.

    python benchmarks/bench_context.py                                  # byte tokenizer, k=2, 10/25/50 steps
    python benchmarks/bench_context.py --tokenizer /path/to/Qwen2.5-1.5B-Instruct --out context.json

For every environment the expert replays a few tasks (``envs.expert.expert_episode``: templated thought +
action, the SFT text); their steps are chained in order into episodes of exactly 10/25/50 steps (expert episodes
are shorter than 50 steps, so a 50-step episode is several real ones back to back: every observation and reply is
real env text, only the horizon is synthetic). Each episode is then rendered exactly as the agent loop renders
it (``envs.prompts`` + the chat template) in both layouts, and measured:

* generated: reply tokens (the policy's output; identical in both layouts, it is also the loss-token count)
* trained: tokens of all rows (what every forward pass over the batch processes: rollout prefill with a prefix
  cache, old/ref log-prob recomputation, actor update)
* longest row: prompt + response of the longest row (sets ``data.max_response_length`` / ``max_prompt_length``
  and the per-GPU token budget)
* attention GFLOPs: estimated attention FLOPs of one forward pass over the episode's rows, sum over rows of
  2 * L^2 * d_attn * layers (causal QK^T and AV; projections and MLP are linear in L and left out), with
  Qwen2.5-1.5B-Instruct's shape (28 layers, 12 heads x 128 = 1536). The actor update costs about 3x this.

Tokenizer: ``--tokenizer <dir>`` loads any Hugging Face tokenizer (with its chat template); the default is the
byte-level tokenizer of the tests (one token per UTF-8 byte, ChatML), because no real tokenizer is available
offline here. CAVEAT: byte tokens overcount a BPE tokenizer's by roughly 3.5-4.5x on this English text (so
attention FLOPs by roughly 12-20x); the full/window RATIOS are what carry over. ALFWorld uses
``--alfworld-games`` valid_seen games (its PDDL planner takes seconds to minutes per game), or the synthetic
game when the data is absent.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _report import report  # noqa: E402  (benchmarks/_report.py)
from envs import make_env  # noqa: E402
from envs.expert import expert_episode  # noqa: E402
from envs.prepare import env_kwargs, list_split  # noqa: E402
from envs.prompts import build_messages, build_window_messages, format_observation  # noqa: E402

LAYERS, D_ATTN = 28, 1536  # Qwen2.5-1.5B-Instruct: num_hidden_layers, num_attention_heads * head_dim
SPLITS = {"webshop": "train", "virtualhome": "train", "alfworld": "val"}  # alfworld val = valid_seen


def attention_flops(lengths) -> float:
    """Causal self-attention FLOPs of one forward pass over rows of these lengths (QK^T + AV)."""
    return float(sum(2.0 * L * L * D_ATTN * LAYERS for L in lengths))


def load_tokenizer(spec: str):
    if spec == "byte":
        from tests.recipe.helpers import byte_tokenizer

        return byte_tokenizer(), "byte-level (1 token per UTF-8 byte; see the caveat)"
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec), spec


def expert_steps(env_name: str, n_tasks: int, data_root: Path | None) -> tuple[list[dict], dict]:
    """Real steps of ``n_tasks`` won expert episodes, in order: {"obs", "info", "reply", "action", "reset_info",
    "first"} (first: the step opens its episode), plus a summary."""
    data_dir = (data_root / env_name) if data_root and (data_root / env_name).exists() else None
    if env_name == "alfworld" and data_dir is None:
        import tempfile

        from envs.alfworld import build_synthetic_game

        data_dir = Path(tempfile.mkdtemp(prefix="bench_context_alf_"))
        build_synthetic_game(data_dir, grammar="put")
    env = make_env(env_name, **env_kwargs(env_name, data_dir))
    steps, episodes, start = [], 0, time.perf_counter()
    try:
        tasks = list_split(env, SPLITS[env_name])
        stride = 8 if env_name == "alfworld" and len(tasks) > 8 * n_tasks else 1  # mix ALFWorld's task types
        for task in tasks[::stride][: n_tasks * 3]:
            if episodes == n_tasks:
                break
            episode = expert_episode(env, env_name, task)
            if not episode["won"]:
                continue
            episodes += 1
            for i, ((obs, info, reply), action) in enumerate(zip(episode["steps"], episode["actions"])):
                steps.append({"obs": obs, "info": info, "reply": reply, "action": action,
                              "reset_info": episode["reset_info"], "first": i == 0})
    finally:
        env.close()
    return steps, {"env": env_name, "episodes": episodes, "steps": len(steps),
                   "mean_steps": round(len(steps) / max(episodes, 1), 1),
                   "seconds": round(time.perf_counter() - start, 1), "data": str(data_dir)}


def chained(steps: list[dict], n: int) -> list[dict]:
    """``n`` consecutive real steps (cycling), the first one an episode's first step."""
    return [steps[i % len(steps)] for i in range(n)]


def _ids(tokenizer, messages, generation_prompt: bool) -> int:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)
    return len(tokenizer.encode(text, add_special_tokens=False))


def _reply_tokens(tokenizer, reply: str) -> int:
    return len(tokenizer.encode(reply, add_special_tokens=False)) + 1  # + the end-of-turn token


def measure(tokenizer, env_name: str, episode: list[dict], k: int | None) -> dict:
    """Token counts of one episode in the full layout (k=None) or the window layout with k past steps."""
    first = episode[0]
    generated = sum(_reply_tokens(tokenizer, s["reply"]) for s in episode)
    if k is None:
        chat = build_messages(env_name, first["obs"], {**first["info"], **first["reset_info"]})
        for i, s in enumerate(episode):
            chat.append({"role": "assistant", "content": s["reply"]})
            if i + 1 < len(episode):
                nxt = episode[i + 1]
                chat.append({"role": "user", "content": format_observation(env_name, nxt["obs"], nxt["info"])})
        # the row ends on the last reply's end-of-turn token (no template text after it), as in the agent loop
        lengths = [_ids(tokenizer, chat[:-1], True) + _reply_tokens(tokenizer, episode[-1]["reply"])]
    else:
        lengths, history = [], []
        for s in episode:
            messages = build_window_messages(env_name, s["obs"], s["info"], history, k, first["reset_info"])
            lengths.append(_ids(tokenizer, messages, True) + _reply_tokens(tokenizer, s["reply"]))
            history.append((s["obs"], s["action"]))
    return {"rows": len(lengths), "generated": generated, "trained": sum(lengths), "longest_row": max(lengths),
            "attn_gflops": attention_flops(lengths) / 1e9}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", nargs="+", default=["webshop", "virtualhome", "alfworld"])
    parser.add_argument("--tasks", type=int, default=10, help="expert episodes per env (webshop, virtualhome)")
    parser.add_argument("--alfworld-games", type=int, default=5, help="valid_seen games (the planner is slow)")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--history-length", type=int, default=2)
    parser.add_argument("--tokenizer", default="byte", help="'byte' or a Hugging Face tokenizer folder")
    parser.add_argument("--data-root", default=os.environ.get("SPA_SHARED_DATA", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--out", default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)

    from tqdm import tqdm

    tokenizer, tok_name = load_tokenizer(args.tokenizer)
    print(f"tokenizer: {tok_name}; attention FLOPs with {LAYERS} layers x d_attn {D_ATTN} (Qwen2.5-1.5B)")
    rows, k = [], args.history_length
    for env_name in args.envs:
        n = args.alfworld_games if env_name == "alfworld" else args.tasks
        try:
            steps, summary = expert_steps(env_name, n, Path(args.data_root))
        except (ImportError, FileNotFoundError) as exc:
            print(f"{env_name}: skipped ({exc})")
            continue
        print(f"{env_name}: {summary}")
        if not steps:
            continue
        for n_steps in tqdm(args.steps, desc=env_name, unit="horizon"):
            episode = chained(steps, n_steps)
            full, window = measure(tokenizer, env_name, episode, None), measure(tokenizer, env_name, episode, k)
            for layout, m in (("full", full), (f"window k={k}", window)):
                rows.append({"env": env_name, "steps": n_steps, "layout": layout, **m,
                             "attn_gflops": round(m["attn_gflops"], 1),
                             "trained/full": round(m["trained"] / full["trained"], 3),
                             "longest/full": round(m["longest_row"] / full["longest_row"], 3),
                             "attn/full": round(m["attn_gflops"] / full["attn_gflops"], 3)})
    report(rows, ["env", "steps", "layout", "rows", "generated", "trained", "longest_row", "attn_gflops",
                  "trained/full", "longest/full", "attn/full"], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
