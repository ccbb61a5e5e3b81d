"""A CPU tour of the estimator path, end to end, in a few minutes and with no download:

    python -m recipe.spa.tour [webshop] [--output outputs/tour] [--tasks 32] [--data-dir DIR]
    bash examples/cpu_tour.sh                      # the same, through the thin shell wrapper

1. **Tasks**: ``envs.prepare`` writes the first ``--tasks`` train tasks as the verl RL parquet the trainer reads.
2. **Episodes**: every task is played in the real environment four times: the scripted expert (``expert``), and
   three perturbed versions so that R varies: ``no_options`` (buys without choosing the options: a partial
   score), ``other_product`` (opens another search hit instead of the goal's, then clicks the expert's options,
   which may not exist there, and buys: a low or partial score) and ``stop_early`` (stops before buying: R = 0).
   Replies are written with ``envs.actions.format_action`` and parsed back with ``parse_action``; the chat is
   built with ``envs.prompts`` (``build_messages`` + ``format_observation``), as the ``env_agent`` loop does.
3. **Tokenizer and model**: a word-level tokenizer is trained on those chats (with a small chat template), a tiny
   Llama-style backbone is built from a config, and every episode becomes a
   :class:`~spa_reward.records.TrajectoryRecord` (prompt = the templated opening chat; one span per assistant
   turn), written to ``records/<env>.jsonl``.
4. **Estimator**: ``python -m spa_reward.progress.train`` on those records with settings that learn at this size
   (lr 1e-3, 20-step linear warm-up, several epochs; a quarter of the tasks held out by uid): it prints the
   eval Pearson of sum_t c_t against R.
5. **Attribution**: the trained estimator scores every record; ``spa_reward.viz`` draws c_t, g_t and
   r_t = c_t + 0.5 g_t of one held-out expert trajectory as ``attribution.png``.
6. **Advantages**: ``grpo`` (outcome only), ``gigpo`` (exact state matches) and ``spa`` (learned step rewards),
   through verl's ``get_adv_estimator_fn``, on the records grouped by task; a table of the mean advantage per
   variant and turn is printed and saved as ``advantages.md``.

Everything goes under ``--output`` (default ``outputs/tour``); a rerun replaces it (only a folder an earlier tour
wrote: a non-empty folder without its ``.spa_tour`` marker is refused).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from envs.cli import positive_int

logger = logging.getLogger("recipe.spa.tour")

ENVS = ("webshop",)
VARIANTS = ("expert", "no_options", "other_product", "stop_early")
STYLE = "react"
SLIDING_WINDOW = 64  # tokens each position attends to in the tiny backbone
SHOW_ADMISSIBLE = False  # the agent loop's env.include_admissible=false: pages without the action list (shorter)
ALPHA, BETA = 1.0, 0.5  # r_t = alpha * c_t + beta * g_t (the released code's weights)
SPECIALS = ("[PAD]", "[UNK]", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
REPO = Path(__file__).resolve().parents[2]
MARKER = ".spa_tour"  # a rerun only replaces folders that carry it


def default_data_dir(env_name: str) -> Path:
    """``$SPA_DATA/<env>``, else ``$WEBSHOP_DATA`` (webshop), else ``<repo>/../shared/data/<env>``."""
    if os.environ.get("SPA_DATA"):
        return Path(os.environ["SPA_DATA"]).expanduser() / env_name
    if env_name == "webshop" and os.environ.get("WEBSHOP_DATA"):
        return Path(os.environ["WEBSHOP_DATA"]).expanduser()
    return REPO.parent / "shared" / "data" / env_name


# ------------------------------------------------------------------------------------------------ episodes


def variant_actions(variant: str, expert: list[str], admissible_after_search: list[str]) -> list[str]:
    """The action list of one perturbed episode, from the expert's (``search, [next...], click[asin], options...,
    buy``) and the clickables of the first results page."""
    buy = expert[-1]
    product_at = next(i for i, a in enumerate(expert) if a.startswith("click[") and a not in
                      ("click[Next >]", "click[< Prev]"))
    if variant == "expert":
        return list(expert)
    if variant == "no_options":
        return expert[: product_at + 1] + [buy]
    if variant == "stop_early":
        return expert[:-1]
    if variant == "other_product":
        target = expert[product_at]
        others = [a for a in admissible_after_search if a.startswith("click[") and a != target
                  and a.lower() not in ("click[next >]", "click[< prev]", "click[back to search]")]
        if not others:
            return expert[:-1]
        return [expert[0], others[-1]] + expert[product_at + 1 :]
    raise ValueError(f"unknown variant {variant!r}; use one of {VARIANTS}")


def play(env, env_name: str, task_id: str, actions: list[str]) -> dict[str, Any]:
    """Step ``actions`` through the env as the agent loop would (reply -> parse_action -> env.step) and return
    the chat, per-turn executability/anchors and the outcome."""
    from envs.actions import format_action, parse_action
    from envs.expert import make_thought
    from envs.prompts import build_messages, format_observation

    obs, info = env.reset(task_id)
    messages = build_messages(env_name, obs, info, style=STYLE, include_admissible=SHOW_ADMISSIBLE)
    goal = info.get("goal")
    anchors, executable, stepped = [], [], []
    anchor = str(info.get("anchor", obs))
    step_info: dict = {"won": False, "score": 0.0}
    reward, done = 0.0, False
    for t, action in enumerate(actions):
        reply = format_action(action, make_thought(env_name, action, goal, t), STYLE)
        parsed = parse_action(reply, STYLE)
        messages.append({"role": "assistant", "content": reply})
        anchors.append(anchor)
        stepped.append(parsed.action)
        obs, reward, done, step_info = env.step(parsed.action)
        executable.append(bool(step_info.get("executable", False)))
        anchor = str(step_info.get("anchor", anchor))
        if done:
            break
        if t < len(actions) - 1:
            messages.append({"role": "user", "content": format_observation(env_name, obs, step_info,
                                                                           SHOW_ADMISSIBLE)})
    return {"messages": messages, "actions": stepped, "executable": executable, "anchors": anchors,
            "reward": float(reward) if done else 0.0, "won": bool(step_info.get("won", False)), "done": done,
            "score": float(step_info.get("score", 0.0))}


def collect_episodes(env_name: str, task_ids: list[str], data_dir: Path) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    from envs import make_env
    from envs.prepare import env_kwargs

    env = make_env(env_name, **env_kwargs(env_name, data_dir))
    episodes = []
    try:
        for task_id in tqdm(task_ids, desc=f"{env_name} episodes", unit="task"):
            env.reset(task_id)
            expert = env.expert_actions()
            if not expert or not expert[-1].lower().startswith("click[buy"):
                logger.warning("task %s: no scripted expert, skipped", task_id)
                continue
            env.reset(task_id)
            _obs, _r, _d, info = env.step(expert[0])
            after_search = list(info.get("admissible_actions") or [])
            for variant in VARIANTS:
                ep = play(env, env_name, task_id, variant_actions(variant, expert, after_search))
                episodes.append({"task_id": str(task_id), "variant": variant, **ep})
    finally:
        env.close()
    return episodes


# ------------------------------------------------------------------------------------ tokenizer and records


def build_tokenizer(texts, out_dir: Path, vocab_size: int = 6000):
    """A word-level fast tokenizer trained on ``texts`` (offline, milliseconds), with :data:`CHAT_TEMPLATE`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS)))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   eos_token="<|end|>", additional_special_tokens=list(SPECIALS[2:]))
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def _ids(tokenizer, messages, add_generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def episode_record(ep: dict, env_name: str, tokenizer, tokenizer_name: str) -> dict[str, Any]:
    """A trajectory record: prompt = the templated opening chat (with the generation prompt), then per turn the
    assistant reply (a scored span) and the templated observation after it."""
    msgs = ep["messages"]
    first = next(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    ids = _ids(tokenizer, msgs[:first], True)
    prompt_length = len(ids)
    spans = []
    for k in range(first, len(msgs)):
        if msgs[k]["role"] != "assistant":
            continue
        start = len(_ids(tokenizer, msgs[:k], True))
        end = len(_ids(tokenizer, msgs[: k + 1], False))
        spans.append([start, end])
    ids = _ids(tokenizer, msgs, False)
    uid = f"{env_name}-{ep['task_id']}"
    return {
        "format_version": 1, "uid": uid, "episode_id": f"{uid}-{ep['variant']}", "env_name": env_name,
        "task_id": ep["task_id"], "tokenizer": tokenizer_name, "input_ids": ids, "prompt_length": prompt_length,
        "turn_spans": spans, "executable": ep["executable"], "reward": ep["reward"], "won": ep["won"],
        "actions": ep["actions"], "truncated": not ep["done"],
        "extra": {"variant": ep["variant"], "turn_anchors": ep["anchors"], "score": ep["score"]},
    }


def build_tiny_estimator(vocab_size: int, pad_id: int, tokenizer, out_dir: Path, max_length: int, seed: int = 0):
    import torch

    from spa_reward.progress.model import ProgressEstimator, ProgressEstimatorConfig, build_tiny_backbone_config

    torch.manual_seed(seed)
    cfg = ProgressEstimatorConfig(
        # sliding-window attention: a from-scratch model this small learns "what did this turn do" from the
        # tokens near the turn's end; full attention over 1-2k tokens starts out as a near-uniform average
        backbone_config=build_tiny_backbone_config(vocab_size=vocab_size, hidden_size=64, num_layers=2, num_heads=4,
                                                   max_position_embeddings=max_length, model_type="mistral",
                                                   sliding_window=SLIDING_WINDOW),
        head="mlp", max_length=max_length, tokenizer=str(out_dir / "tokenizer"), pad_token_id=pad_id,
    )
    ProgressEstimator(cfg).save_pretrained(out_dir, tokenizer=tokenizer)
    return out_dir


# ------------------------------------------------------------------------------------------------ advantages


def advantage_table(records, contributions: list[list[float]]) -> tuple[str, dict]:
    """Run grpo/gigpo/spa through verl's registry on the records (one uid group per task) and tabulate the mean
    advantage per variant: of the whole episode and of its first and last turn."""
    import numpy as np
    import torch
    from omegaconf import OmegaConf
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    from spa_reward.advantage import register_estimators
    from spa_reward.threads import thread_policy

    register_estimators()  # spa and gigpo in verl's registry (the plug-in does it too when verl loads it)

    n = len(records)
    length = max(len(r.input_ids) - r.prompt_length for r in records)
    mask = torch.zeros(n, length)
    outcome = torch.zeros(n, length)
    dense = torch.zeros(n, length)
    for i, (rec, c) in enumerate(zip(records, contributions)):
        p = rec.prompt_length
        for t, (a, b) in enumerate(rec.turn_spans):
            mask[i, a - p : b - p] = 1
            dense[i, b - p - 1] = ALPHA * c[t] + BETA * float(rec.executable[t])
        outcome[i, rec.turn_spans[-1][1] - p - 1] = rec.reward
    index = np.array([r.uid for r in records], dtype=object)
    anchors = np.empty(n, dtype=object)
    anchors[:] = [list(r.extra["turn_anchors"]) for r in records]
    episode_rewards = [r.reward for r in records]
    cfg = OmegaConf.create({"gamma": 1.0, "lam": 1.0, "norm_adv_by_std_in_grpo": True,
                            "gigpo": {"mode": "mean_norm"}, "spa": {"mode": "mean_norm"}})
    runs = {
        "grpo": thread_policy(get_adv_estimator_fn("grpo"))(
            token_level_rewards=outcome, response_mask=mask, index=index, config=cfg)[0],
        "gigpo": thread_policy(get_adv_estimator_fn("gigpo"))(
            token_level_rewards=outcome, response_mask=mask, index=index, config=cfg, turn_anchors=anchors)[0],
        "spa": thread_policy(get_adv_estimator_fn("spa"))(
            token_level_rewards=dense, response_mask=mask, index=index, config=cfg,
            episode_rewards=episode_rewards)[0],
    }
    rows = {}
    for v in VARIANTS:
        sel = [i for i, r in enumerate(records) if r.extra["variant"] == v]
        if not sel:
            continue
        row = {"episodes": len(sel), "R": float(np.mean([records[i].reward for i in sel])),
               "sum_c": float(np.mean([sum(contributions[i]) for i in sel]))}
        for name, adv in runs.items():
            first = [float(adv[i, records[i].turn_spans[0][0] - records[i].prompt_length]) for i in sel]
            last = [float(adv[i, records[i].turn_spans[-1][0] - records[i].prompt_length]) for i in sel]
            row[f"{name}_first"] = float(np.mean(first))
            row[f"{name}_last"] = float(np.mean(last))
        rows[v] = row
    head = ("| variant | episodes | mean R | mean sum c_t | GRPO A (turn 0 / last) | GiGPO A (turn 0 / last) "
            "| SPA A (turn 0 / last) |\n|---|---|---|---|---|---|---|")
    lines = [head]
    for v, r in rows.items():
        lines.append(f"| {v} | {r['episodes']} | {r['R']:.3f} | {r['sum_c']:.3f} | "
                     + " | ".join(f"{r[f'{k}_first']:+.2f} / {r[f'{k}_last']:+.2f}" for k in ("grpo", "gigpo", "spa"))
                     + " |")
    return "\n".join(lines), rows


# ------------------------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recipe.spa.tour", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("env", nargs="?", default="webshop", choices=ENVS)
    p.add_argument("--output", default="outputs/tour", help="output folder (replaced on a rerun)")
    p.add_argument("--data-dir", default=None, help="env data (default: $SPA_DATA/<env>, else ../shared/data/<env>)")
    p.add_argument("--tasks", type=positive_int, default=32, help="train tasks to play (4 episodes each)")
    p.add_argument("--epochs", type=positive_int, default=10, help="estimator epochs")
    p.add_argument("--lr", type=float, default=1e-3, help="estimator learning rate (tiny model from scratch)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="estimator batch size")
    p.add_argument("--max-length", type=positive_int, default=1024, help="estimator max tokens per trajectory")
    p.add_argument("--seed", type=int, default=0)
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.time()
    out = Path(args.output)
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise SystemExit(f"--output {out} is not empty and is not a previous tour's folder (no {MARKER}): "
                             "choose another folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by python -m recipe.spa.tour; a rerun replaces this folder\n")
    data_dir = Path(args.data_dir).expanduser() if args.data_dir else default_data_dir(args.env)
    if not data_dir.is_dir():
        raise SystemExit(f"no {args.env} data at {data_dir}: pass --data-dir or set SPA_DATA (see README: data)")
    summary: dict[str, Any] = {"env": args.env, "output": str(out)}

    # 1. tasks, as the RL trainer reads them
    import pandas as pd

    from envs.prepare import prepare

    written = prepare(args.env, out / "data", splits=["train"], data_dir=data_dir, max_train=args.tasks,
                      seed=args.seed)
    task_ids = [row["task_id"] for row in pd.read_parquet(written["train"])["extra_info"]]
    print(f"[1/6] {len(task_ids)} {args.env} train tasks -> {written['train']}")

    # 2. episodes in the real env
    episodes = collect_episodes(args.env, task_ids, data_dir)
    by_variant = {v: [e["reward"] for e in episodes if e["variant"] == v] for v in VARIANTS}
    print("[2/6] episodes: " + ", ".join(f"{v} {len(r)} (mean R {sum(r) / max(1, len(r)):.2f})"
                                         for v, r in by_variant.items()))

    # 3. tokenizer, records, tiny model
    from spa_reward.records import RecordWriter

    texts = [m["content"] for e in episodes for m in e["messages"]]
    tok_dir = out / "tokenizer"
    tokenizer = build_tokenizer(texts, tok_dir)
    rec_path = out / "records" / f"{args.env}.jsonl"
    with RecordWriter(rec_path) as w:
        records = [w.write(episode_record(e, args.env, tokenizer, str(tok_dir))) for e in episodes]
    lengths = sorted(len(r.input_ids) for r in records)
    max_length = min(args.max_length, max(lengths))
    init = build_tiny_estimator(len(tokenizer), tokenizer.pad_token_id, tokenizer, out / "init", max(lengths))
    print(f"[3/6] tokenizer ({len(tokenizer)} words), {len(records)} records -> {rec_path} "
          f"(median {lengths[len(lengths) // 2]} tokens), tiny estimator -> {init}")

    # 4. train the estimator
    from spa_reward.progress import train as train_mod

    est_dir = out / "estimator"
    result = train_mod.main([
        "--records", str(rec_path), "--eval-fraction", "0.25", "--model", str(init), "--output", str(est_dir),
        "--max-length", str(max_length), "--lr", str(args.lr), "--warmup-steps", "10",
        "--warmup-type", "linear", "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
        "--grad-accum", "1", "--weight-decay", "0.0", "--eval-every", "12", "--no-progress-bar", "--save-total-limit", "1", "--device", "cpu", "--logger", "none",
        "--seed", str(args.seed),
    ])
    metrics = json.loads((est_dir / "metrics.json").read_text())
    summary["estimator"] = {k: metrics.get(k) for k in ("step", "eval/pearson", "eval/spearman", "eval/mse",
                                                           "eval/n", "final_train_loss")}
    print(f"[4/6] estimator: {result['step']} steps, eval Pearson(sum c_t, R) = {metrics.get('eval/pearson'):.3f} "
          f"(Spearman {metrics.get('eval/spearman'):.3f}, MSE {metrics.get('eval/mse'):.4f}, "
          f"{int(metrics.get('eval/n', 0))} held-out episodes) -> {est_dir}")

    # 5. score every record, draw one held-out expert trajectory
    from spa_reward.progress.serve import ProgressScorer, record_item
    from spa_reward.viz import plot_attribution

    scorer = ProgressScorer(str(est_dir), device="cpu")
    contributions = scorer.score([record_item(r) for r in records])
    held = train_mod.split_uids([r.uid for r in records], 0.25, args.seed)
    pick = next((i for i, r in enumerate(records) if r.uid in held and r.extra["variant"] == "expert"), 0)
    rec = records[pick]
    png = plot_attribution(contributions[pick], rec.executable, rec.actions, ALPHA, BETA, rec.reward,
                           out / "attribution.png",
                           title=f"{rec.env_name} task {rec.task_id} ({rec.extra['variant']}, held out)")
    summary["attribution"] = {"png": str(png), "episode": rec.episode_id, "c_t": contributions[pick],
                              "actions": rec.actions}
    print(f"[5/6] attribution of {rec.episode_id}: c_t = {[round(c, 3) for c in contributions[pick]]} -> {png}")

    # 6. advantages
    table, rows = advantage_table(records, contributions)
    (out / "advantages.md").write_text(table + "\n")
    summary["advantages"] = rows
    print("[6/6] advantages (mean per variant; GRPO/GiGPO from R, SPA from r_t = c_t + 0.5 g_t):")
    print(table)
    summary["seconds"] = round(time.time() - t_start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"done in {summary['seconds']:.0f} s -> {out}/summary.json")
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
