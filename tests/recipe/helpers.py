"""Shared pieces of the recipe tests: a tiny local tokenizer, a fake LLM server, a toy env, configs.

Nothing is downloaded. The tokenizer is byte-level (every UTF-8 byte is one token, no merges) with ChatML
special tokens and a ChatML chat template, so decode(encode(text)) == text and replies parse exactly as a real
model's would; turn boundaries behave like Qwen2.5's (verl's Qwen continuous-token builder is used).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Callable

from omegaconf import OmegaConf

from envs.base import TextEnv

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "recipe" / "spa" / "config"
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_tokenizer(save_dir: str | os.PathLike | None = None):
    """A byte-level BPE tokenizer without merges + ChatML template (eos = <|im_end|>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.add_special_tokens({"pad_token": "<|endoftext|>", "eos_token": "<|im_end|>",
                             "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    fast.chat_template = CHATML
    if save_dir is not None:
        fast.save_pretrained(str(save_dir))
        fast = PreTrainedTokenizerFast.from_pretrained(str(save_dir))
    return fast


def mask_runs(mask) -> list[tuple[int, int]]:
    """[first, last] of every run of 1s in a response mask."""
    runs, start = [], None
    for i, m in enumerate(list(mask) + [0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            runs.append((start, i - 1))
            start = None
    return runs


class FakeServer:
    """Stands in for verl's LLMServerClient: ``policy(turn, prompt_text) -> reply text``; the reply is encoded
    and ends with <|im_end|>, then cut to ``sampling_params['max_tokens']`` like a real server."""

    def __init__(self, tokenizer, policy: Callable[[int, str], str], logprobs: bool = True):
        self.tokenizer, self.policy, self.logprobs = tokenizer, policy, logprobs
        self.calls: list[dict] = []

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs):
        from verl.workers.rollout.replica import TokenOutput

        turn = sum(1 for c in self.calls if c["request_id"] == request_id)
        text = self.policy(turn, self.tokenizer.decode(prompt_ids))
        ids = self.tokenizer.encode(text, add_special_tokens=False) + [self.tokenizer.eos_token_id]
        max_tokens = sampling_params.get("max_tokens")
        if max_tokens is not None:
            ids = ids[:max_tokens]
        self.calls.append({"request_id": request_id, "max_tokens": max_tokens, "prompt_len": len(prompt_ids),
                           "n_out": len(ids)})
        await asyncio.sleep(0)
        return TokenOutput(token_ids=ids, log_probs=[-0.25] * len(ids) if self.logprobs else None,
                           extra_fields={"global_steps": 7, "min_global_steps": 7, "max_global_steps": 7})


class ToyEnv(TextEnv):
    """Walk to position K+1 for task tK. 'step forward' advances, 'wait' does nothing, anything else is not
    executable. Anchors are the positions, so revisited states share an anchor."""

    name = "toy"

    def __init__(self, max_steps: int = 10, obs_pad: int = 0, hang_on: str | None = None, hang_seconds: float = 5.0,
                 crash_on: str | None = None, wait_for_file: str | None = None, cache_file: str | None = None,
                 build_seconds: float = 0.0):
        super().__init__(max_steps)
        self.position, self.need, self.obs_pad = 0, 1, obs_pad
        self.hang_on, self.hang_seconds, self.crash_on = hang_on, hang_seconds, crash_on
        self.wait_for_file = wait_for_file  # "wait" blocks until this file exists (written by the test)
        if cache_file and not os.path.exists(cache_file):  # a disk cache built once, as WebShop builds its index
            self.build_cache(cache_file, build_seconds)

    @staticmethod
    def build_cache(path: str, seconds: float) -> None:
        """Write ``path`` through ``<path>.tmp<pid>`` in ``seconds``, counting builds in ``<path>.builds``; a build
        that fails (or is stopped) deletes its temp file, as WebShop's builds do."""
        import time

        with open(f"{path}.builds", "a") as f:
            f.write("x")
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                f.write("partial")
            time.sleep(seconds)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def list_tasks(self, split: str) -> list[str]:
        return [f"t{i}" for i in range(5)]

    def task_type(self, task_id: str) -> str:
        return "even" if int(task_id[1:]) % 2 == 0 else "odd"

    def _obs(self) -> str:
        return f"You are at {self.position}." + (" ." * self.obs_pad)

    def _reset(self, task_id, seed):
        self.position, self.need = 0, int(task_id[1:]) + 1
        return self._obs(), {"goal": f"reach {self.need}", "anchor": "pos0", "admissible_actions": None}

    def _step(self, action):
        if self.hang_on and action == self.hang_on:
            import time

            time.sleep(self.hang_seconds)
        if self.crash_on and action == self.crash_on:
            os._exit(3)
        if self.wait_for_file and action == "wait":
            import time

            while not os.path.exists(self.wait_for_file):
                time.sleep(0.01)
        if action == "step forward":
            self.position += 1
            won = self.position >= self.need
            return self._obs(), (1.0 if won else 0.0), won, {"won": won, "executable": True,
                                                             "anchor": f"pos{self.position}",
                                                             "score": float(won)}
        if action == "wait":
            return self._obs(), 0.0, False, {"won": False, "executable": True, "anchor": f"pos{self.position}"}
        return "Nothing happens.", 0.0, False, {"won": False, "executable": False}

    def expert_actions(self):
        return ["step forward"] * (self.need - self.position)


def agent_config(env: dict, response_length: int = 4096, prompt_length: int = 8192, **extra) -> Any:
    """The config keys the agent loop reads, with the recipe's env defaults under ``env``."""
    base = OmegaConf.load(CONFIG_DIR / "spa_trainer.yaml")
    env_cfg = OmegaConf.merge(base.env, env)
    cfg = {
        "actor_rollout_ref": {
            "rollout": {"prompt_length": prompt_length, "response_length": response_length, "n": 2,
                        "agent": {"num_workers": 1}, "val_kwargs": {"n": 1}},
            "model": {"path": "tiny"},
        },
        "data": {"apply_chat_template_kwargs": {}, "train_batch_size": 2},
        "env": env_cfg,
    }
    return OmegaConf.merge(OmegaConf.create(cfg), OmegaConf.create(extra))


def make_agent_loop(config, server, tokenizer, hf_model_type: str = "qwen2"):
    """Build the env_agent loop the way verl's AgentLoopWorker does (call inside a running event loop)."""
    import hydra
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, _agent_loop_registry

    import recipe.spa.agent_loop  # noqa: F401  (registers env_agent)

    return hydra.utils.instantiate(
        config=_agent_loop_registry["env_agent"],
        trainer_config=DictConfigWrap(config=config),
        server_manager=server,
        tokenizer=tokenizer,
        processor=None,
        hf_model_type=hf_model_type,
        dataset_cls=None,
        data_config=DictConfigWrap(config.data),
    )


def row(task_id: str, env_name: str = "toy", split: str = "train", uid: str = "u0", session_id: int = 0) -> dict:
    """The kwargs verl passes to AgentLoop.run for one dataset row (v1 adds uid/session_id/global_steps)."""
    return {
        "raw_prompt": [{"role": "user", "content": f"{env_name} task {task_id}"}],
        "extra_info": {"index": 0, "env_name": env_name, "task_id": task_id, "split": split},
        "agent_name": "env_agent",
        "uid": uid,
        "session_id": session_id,
        "global_steps": 3,
        "index": 0,
    }


def trainer_config(*overrides: str):
    """The recipe's composed trainer config (hydra compose of spa_trainer.yaml)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose("spa_trainer", overrides=list(overrides))


def postprocess_worker(manager):
    """verl's real ``AgentLoopWorkerTQ`` (the v1 rollout worker) without Ray or servers, whose streaming reward call
    goes to ``manager`` in process: enough to run its ``_agent_loop_postprocess`` on agent-loop outputs."""
    from verl.trainer.ppo.v1 import agent_loop_tq

    worker_cls = agent_loop_tq.AgentLoopWorkerTQ.__ray_metadata__.modified_class
    worker = worker_cls.__new__(worker_cls)
    worker.reward_loop_worker_handles = [_RewardWorker(manager)]
    worker.processor, worker.mm_processor_kwargs, worker.distillation_enabled = None, {}, False
    return worker


class _Remote:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        return self.fn(*args)


class _RewardWorker:
    """Stands in for a RewardLoopWorker handle: ``handle.compute_score.remote(data)`` -> ``manager.run_single``."""

    def __init__(self, manager):
        self.compute_score = _Remote(manager.run_single)


def score_episodes(tokenizer, cfg, episodes, monkeypatch, scorer=None, env: dict | None = None, loop_config=None):
    """Play ``episodes`` = [(policy, run kwargs), ...] with the env_agent loop (toy env, thread pool), score each
    through verl's streaming reward path (``AgentLoopWorker._compute_score`` -> our reward manager, built by
    verl's ``load_reward_manager`` from ``cfg``) and the v1 ``AgentLoopWorkerTQ._agent_loop_postprocess``, whose
    TransferQueue put is captured (``loop_config``: the agent loop's config instead of ``agent_config(env)``).
    Returns ``[(AgentLoopOutput, {field: value}, tag), ...]``."""
    from verl.trainer.ppo.reward import load_reward_manager
    from verl.trainer.ppo.v1 import agent_loop_tq

    puts = []

    async def fake_put(keys, fields, tags, partition_id):
        puts.append((keys, fields, tags))

    monkeypatch.setattr(agent_loop_tq.tq, "async_kv_batch_put", fake_put)
    env = env or {"name": "toy", "max_steps": 10, "reward_scale": 10.0, "pool": {"backend": "thread", "num_workers": 2}}

    async def go():
        manager = load_reward_manager(cfg, tokenizer, **({"scorer": scorer} if scorer is not None else {}))
        worker = postprocess_worker(manager)
        results = []
        for policy, kwargs in episodes:
            loop = make_agent_loop(loop_config if loop_config is not None else agent_config(env),
                                   FakeServer(tokenizer, policy), tokenizer)
            out = await loop.run({"temperature": 1.0, "logprobs": True}, **kwargs)
            await worker._agent_loop_postprocess(out, False, **kwargs)
            keys, fields, tags = puts[-1]
            results.append((out, {k: fields[k][0] for k in fields.keys()}, tags[0]))
        return results

    return asyncio.run(go())


# real env -> (data fixture or None, split, task index) the real-env loop tests play
REAL_ENVS = {"webshop": ("webshop_data", "train", 3), "alfworld": ("alfworld_data", "train", 0),
             "virtualhome": (None, "train", 0)}


def real_env(request, env_name: str):
    """(env, its constructor kwargs, a task id) of a real environment; the test is skipped with the reason when
    its engine or data is not here."""
    import pytest

    from envs import make_env
    from envs.prepare import SPLITS

    fixture, split, index = REAL_ENVS[env_name]
    kwargs = {"data_dir": str(request.getfixturevalue(fixture))} if fixture else {}
    try:
        env = make_env(env_name, **kwargs)
    except (ImportError, FileNotFoundError) as exc:
        pytest.skip(f"{env_name} not available here: {exc}")
    return env, kwargs, env.list_tasks(SPLITS[env_name][split])[index]
