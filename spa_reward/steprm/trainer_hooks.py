"""What the ``spa`` trainer mode calls for step-reward models: one object, :class:`StepRewardHooks`.

* ``start()`` (trainer start-up, before checkpoint loading): creates the service actor the run needs, so a
  tokenizer mismatch or an unschedulable GPU fails here with our error, not in a reward worker:
  ``algorithm.reward=spa`` -> the progress scorer (frozen; ``algorithm.spa.online.enable=true`` -> the online
  progress service under the same name); ``algorithm.reward=istar`` -> the implicit PRM service;
  ``algorithm.reward=stepagent`` with ``algorithm.stepagent.mode=implicit|irl`` -> the StepAgent PRM (implicit
  objective + step-level DPO) or discriminator (``match`` needs no service).
  Reward workers only look the actor up by name and ``await`` it.
* ``on_batch(batch, metrics)`` (start of ``_compute_advantage``, after the old log-probs exist): for ``istar``
  adds ``r_t = beta * q_t`` at each turn's last token of ``rm_scores`` (computed with the weights from before this
  batch's update), then, for an online objective, one ``update`` on the batch's finished episodes (env-failed
  episodes excluded). StepAgent ``implicit`` / ``irl`` add ``beta * q_t`` / ``clip(logit_t)`` on every policy turn
  the same way (prefix turns carry mask 0, so they are no turns and get nothing), then train on the batch's
  unmatched compared turns (:func:`stepagent_pairs`). Metrics ``steprm/*``, ``stepagent/*``.
  Window layout (``env.history=window``, one row per step): every item carries its episode, ``{uid}_{session_id}``
  from the TransferQueue keys (:func:`spa_reward.trainer.session_layout`), so the service trains on a session's
  rows as one episode (iStar: Q = mean of beta * q_t over all its turns, pairs of episodes; online SPA: the sum of
  its rows' c_t regressed onto R); scoring stays per row (each row's reply, its own old log-probs). A row failed
  by the env drops its whole episode from training. StepAgent pairs come from the step-0 row.
* ``save(step_dir)`` / ``load(step_dir)``: the service's weights, optimiser and replay window in
  ``<global_step_N>/steprm`` beside verl's actor checkpoint; :func:`prune_rotated_states` removes it with the
  checkpoint when verl's rotation (``trainer.max_actor_ckpt_to_keep``) has removed ``global_step_N/actor``.
* Restarts: an online service publishes to ``<trainer.default_local_dir>/steprm_latest`` what a restart needs (a
  base state: the last checkpoint's ``steprm/``, referenced, or a full copy every ``publish_every`` updates without
  one; then each update's input batch, which a restart replays) and restores it itself when Ray restarts it
  (``service.StepRewardServiceActor``). Before each
  call the hooks compare the service's ``incarnation`` and ``version`` with what they expect (the version after
  their last update): a new incarnation is a restart (counted, ``steprm/restarts``); a version other than the
  expected one, or an actor that could not restore itself (and no checkpoint of this run at the expected version
  to load), stops the run with an error naming what happened.

The pure part (:func:`episode_items`, :func:`add_step_rewards`) works on plain per-row tensors, so it is tested
without TransferQueue or Ray.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
import uuid
from collections.abc import Sequence
from typing import Any, Optional

import torch

from spa_reward import turns
from spa_reward.config_check import spa_objective
from spa_reward.steprm.service import CHECKPOINT_DIR, DEFAULT_PUBLISH_EVERY, SERVICE_NAME, StepRMSettings

logger = logging.getLogger(__name__)

STATE_DIR = CHECKPOINT_DIR  # <global_step_N>/steprm
ROLLING_DIR = "steprm_latest"  # under trainer.default_local_dir: what a restart needs, published after every update
ISTAR_KEYS = ("beta", "reference", "lr", "grad_clip", "weight_decay", "steps_per_batch", "replay_batches",
              "micro_batch_size", "max_token_len", "max_length", "dtype", "autocast_bf16", "gradient_checkpointing",
              "lora_r", "lora_alpha", "seed")
STEPAGENT_KEYS = ("beta", "lr", "grad_clip", "weight_decay", "steps_per_batch", "replay_batches", "micro_batch_size",
                  "max_token_len", "max_length", "dtype", "autocast_bf16", "gradient_checkpointing", "lora_r", "lora_alpha", "head",
                  "seed")
# plan kinds whose service trains online / whose scores are added to rm_scores on every turn
TRAINING_KINDS = ("progress_online", "implicit", "stepagent_implicit", "stepagent_irl")
SCORING_KINDS = ("implicit", "stepagent_implicit", "stepagent_irl")
PLAN_BLOCKS = {"implicit": "algorithm.istar", "progress_online": "algorithm.spa.online",
               "stepagent_implicit": "algorithm.stepagent", "stepagent_irl": "algorithm.stepagent"}
ONLINE_KEYS = ("lr", "grad_clip", "weight_decay", "steps_per_batch", "replay_batches", "micro_batch_size",
               "max_token_len", "max_length", "dtype", "autocast_bf16", "gradient_checkpointing", "seed")


def _get(cfg: Any, path: str, default: Any = None) -> Any:
    from spa_reward.config_check import select_key

    return select_key(cfg, path, default)


def _to_plain(value: Any) -> Any:
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:
        pass
    return value


def service_plan(cfg: Any) -> Optional[dict[str, Any]]:
    """What service a config needs: ``None`` (outcome rewards, StepAgent ``match``) or ``{"kind", "name",
    "num_gpus", "settings", "timeout_s"[, "publish_every"]}`` with kind ``progress_frozen`` | ``progress_online`` | ``implicit`` |
    ``stepagent_implicit`` | ``stepagent_irl``.

    StepAgent ``implicit`` always uses ``reference=frozen`` (a frozen copy of the initial PRM): the step-level DPO
    compares the expert's reply, whose tokens the rollout never generated, so there are no rollout log-probs for it.
    """
    reward = _get(cfg, "algorithm.reward")
    if reward == "stepagent":
        mode = _get(cfg, "algorithm.stepagent.mode", "match")
        if mode not in ("implicit", "irl"):
            return None  # match: rewards from the comparison alone; a bad mode is a config problem
        block = _to_plain(_get(cfg, "algorithm.stepagent", {})) or {}
        settings = {k: block[k] for k in STEPAGENT_KEYS if block.get(k) is not None}
        model = block.get("model_path") or _get(cfg, "actor_rollout_ref.model.path")
        if mode == "implicit":
            settings.update(objective="implicit", loss="step_dpo", reference="frozen")
        else:
            settings.update(objective="discriminator", loss="bce", reward_clip=block.get("irl_clip", 5.0))
        settings.update(online=True, model_path=model and os.path.expanduser(str(model)),
                        backbone_config=block.get("backbone_config"))
        return {"kind": f"stepagent_{mode}", "name": str(block.get("service_name") or SERVICE_NAME),
                "num_gpus": float(block.get("num_gpus", 1)), "settings": settings,
                "timeout_s": float(block.get("start_timeout_s", 600)), "publish_every": block.get("publish_every", DEFAULT_PUBLISH_EVERY),
                **_ranks(block.get("num_gpus", 1), block.get("ranks"))}
    if reward == "istar":
        block = _to_plain(_get(cfg, "algorithm.istar", {})) or {}
        settings = {k: block[k] for k in ISTAR_KEYS if block.get(k) is not None}
        model = block.get("model_path") or _get(cfg, "actor_rollout_ref.model.path")
        settings.update(objective="implicit", online=True, model_path=model and os.path.expanduser(str(model)),
                        backbone_config=block.get("backbone_config"))
        return {"kind": "implicit", "name": str(block.get("service_name") or SERVICE_NAME),
                "num_gpus": float(block.get("num_gpus", 1)), "settings": settings,
                "timeout_s": float(block.get("start_timeout_s", 600)), "publish_every": block.get("publish_every", DEFAULT_PUBLISH_EVERY),
                **_ranks(block.get("num_gpus", 1), block.get("ranks"))}
    if reward == "spa":
        online = _to_plain(_get(cfg, "algorithm.spa.online", {})) or {}
        path = _get(cfg, "reward.reward_kwargs.estimator_path") or _get(cfg, "algorithm.spa.estimator_path")
        name = str(_get(cfg, "reward.reward_kwargs.scorer_name") or "spa_progress_scorer")
        gpus = float(_get(cfg, "algorithm.spa.scorer_num_gpus", 1))
        timeout = float(online.get("start_timeout_s", 600))
        ranks = _ranks(_get(cfg, "algorithm.spa.scorer_num_gpus", 1), _get(cfg, "algorithm.spa.scorer_ranks"))
        if not online.get("enable", False):
            return {"kind": "progress_frozen", "name": name, "num_gpus": gpus, "settings": {"model_path": path},
                    "timeout_s": timeout, **ranks}
        settings = {k: online[k] for k in ONLINE_KEYS if online.get(k) is not None}
        settings.update(objective="progress", loss=spa_objective(cfg),
                        online=True, model_path=path and os.path.expanduser(str(path)))
        return {"kind": "progress_online", "name": name, "num_gpus": gpus, "settings": settings, "timeout_s": timeout,
                "publish_every": online.get("publish_every", DEFAULT_PUBLISH_EVERY), **ranks}
    return None


def _ranks(num_gpus: Any, ranks: Any) -> dict[str, Any]:
    """``{"ranks": N}``: the service's ranks (``ranks`` when set; else ``num_gpus`` when it is 2 or more, one rank
    per GPU; else 1, the one-actor service). Bad values are left for :func:`plan_problems` to name."""
    if ranks is not None:
        return {"ranks": ranks}
    try:
        gpus = float(num_gpus)
    except (TypeError, ValueError):
        return {"ranks": 1}
    return {"ranks": int(gpus) if gpus >= 2 and gpus == int(gpus) else 1}


# ------------------------------------------------------------------------------------------- pure helpers


def episode_items(
    prompts: Sequence[torch.Tensor],
    responses: Sequence[torch.Tensor],
    response_masks: Sequence[torch.Tensor],
    uids: Sequence[Any],
    infos: Sequence[dict],
    episode_rewards: Sequence[float],
    old_log_probs: Optional[Sequence[torch.Tensor]] = None,
    reward_scale: float = 1.0,
    episodes: Optional[Sequence[str]] = None,
) -> tuple[list[dict], list[bool]]:
    """Service items (``input_ids``, ``prompt_length``, ``turn_spans``, ``ref_logprobs``, ``uid``, ``success``,
    ``reward``, ``episode``) for one batch of rows, and which rows may train (at least one turn, and no row of
    their episode failed by the env).

    Turns are the runs of 1 in each row's response mask (as the advantage estimators see them); ``success`` is
    the episode's ``won``; ``reward`` is the raw env reward R / ``reward_scale`` (what the progress estimator
    regresses onto, as in the collected records). ``episodes`` (rows,): the episode of each row,
    ``{uid}_{session_id}`` from the TransferQueue keys (:func:`spa_reward.trainer.session_layout`); in the window
    layout the rows of one session are one episode, which the service's losses aggregate over. None: every row is
    an episode of its own (the packed layout)."""
    items, trainable, failed_rows = [], [], []
    for i, (p, r, m) in enumerate(zip(prompts, responses, response_masks)):
        p, r, m = p.reshape(-1), r.reshape(-1), m.reshape(-1)
        n = int(m.numel())
        plen = int(p.numel())
        first = turns.turn_positions(m.unsqueeze(0), "first")[0]
        last = turns.turn_positions(m.unsqueeze(0), "last")[0]
        spans = [[plen + int(a), plen + int(b) + 1] for a, b in zip(first.tolist(), last.tolist()) if a >= 0]
        info = infos[i] if isinstance(infos[i], dict) else {}
        item = {"input_ids": torch.cat([p, r[:n]]).tolist(), "prompt_length": plen, "turn_spans": spans,
                "uid": str(uids[i]), "success": bool(info.get("won", False)),
                "reward": float(episode_rewards[i]) / float(reward_scale or 1.0)}
        if old_log_probs is not None:
            lp = old_log_probs[i].reshape(-1).float()
            item["ref_logprobs"] = [0.0] * plen + lp[:n].tolist() + [0.0] * max(0, n - int(lp.numel()))
        if episodes is not None:
            item["episode"] = str(episodes[i])
        items.append(item)
        failed = bool(info.get("env_failed", False)) or bool(info.get("env_error", ""))
        trainable.append(bool(spans) and not failed)
        failed_rows.append(failed)
    if episodes is not None and any(failed_rows):  # a failed row fails its whole episode (never half an episode)
        bad = {str(e) for e, f in zip(episodes, failed_rows) if f}
        trainable = [ok and str(e) not in bad for ok, e in zip(trainable, episodes)]
    return items, trainable


def skipped_episodes(items: Sequence[dict], trainable: Sequence[bool]) -> int:
    """Episodes (an item's ``episode``, else the item itself) none of whose rows may train."""
    keys = [it.get("episode") or f"\0row{i}" for i, it in enumerate(items)]
    kept = {k for k, ok in zip(keys, trainable) if ok}
    return len(set(keys) - kept)


def stepagent_pairs(items: Sequence[dict], trainable: Sequence[bool], stepagent: Sequence[Any],
                    step_index: Optional[Sequence[int]] = None) -> tuple[list[dict], dict[str, float]]:
    """StepAgent's training pairs of one batch: ``(pair items, counts)``.

    A row gives a pair when it may train (:func:`episode_items`), holds the compared turn (``stepagent["compared"]``;
    in the window layout only the episode's step-0 row, ``step_index`` 0) and the agent's action differs from the
    expert's (``match`` false: a matched pair is the same step twice and would teach the discriminator that one
    action is both expert and not). The state is ``s = input_ids[:context_length]``; the expert action is
    ``expert_reply_ids``; the agent action is the row's own tokens from ``context_length`` to the end of the first
    turn that starts at or after it (the compared turn). Counts: ``stepagent/compared``, ``stepagent/matched``,
    ``stepagent/pairs``, ``stepagent/bad_rows`` (a compared row whose context_length or expert reply does not fit;
    logged, left out)."""
    pairs, counts = [], {"stepagent/compared": 0.0, "stepagent/matched": 0.0, "stepagent/pairs": 0.0,
                         "stepagent/bad_rows": 0.0}
    for i, (item, ok) in enumerate(zip(items, trainable)):
        sa = stepagent[i] if i < len(stepagent) else None
        if not ok or not isinstance(sa, dict) or not sa.get("compared", False):
            continue
        if step_index is not None and int(step_index[i]) != 0:
            continue
        counts["stepagent/compared"] += 1
        if sa.get("match", False):
            counts["stepagent/matched"] += 1
            continue
        ids = item["input_ids"]
        c = int(sa.get("context_length", -1))
        expert = [int(t) for t in (sa.get("expert_reply_ids") or [])]
        end = next((b for a, b in item["turn_spans"] if a >= c), None)
        if not (0 < c < len(ids)) or end is None or not expert:
            counts["stepagent/bad_rows"] += 1
            logger.warning("stepagent: row %d (uid %s) has context_length=%s, %d expert reply tokens and turns %s; "
                           "left out of the pairs", i, item.get("uid"), c, len(expert), item["turn_spans"])
            continue
        pairs.append({"input_ids": ids[:c], "expert_ids": expert, "agent_ids": ids[c:end],
                      "prompt_length": item["prompt_length"], "uid": item["uid"]})
        counts["stepagent/pairs"] += 1
    return pairs, counts


def compared_turns(items: Sequence[dict], stepagent: Sequence[Any], step_index: Optional[Sequence[int]] = None
                   ) -> list[list[bool]]:
    """Per item, per turn: is it the StepAgent compared turn (the first turn starting at or after the row's
    ``context_length`` on a row whose ``stepagent["compared"]`` is true; in the window layout only a step-0 row)."""
    out = []
    for i, item in enumerate(items):
        sa = stepagent[i] if i < len(stepagent) else None
        spans = item["turn_spans"]
        keep = [False] * len(spans)
        if isinstance(sa, dict) and sa.get("compared", False) and (step_index is None or int(step_index[i]) == 0):
            c = int(sa.get("context_length", -1))
            t = next((j for j, (a, _) in enumerate(spans) if a >= c), None)
            if t is not None:
                keep[t] = True
        out.append(keep)
    return out


def add_step_rewards(rm_scores: Sequence[torch.Tensor], items: Sequence[dict], step_rewards: Sequence[Sequence[float]]
                     ) -> list[torch.Tensor]:
    """Each row's ``rm_scores`` plus r_t on the last token of turn t (turn spans of :func:`episode_items`)."""
    out = []
    for scores, item, r in zip(rm_scores, items, step_rewards):
        if len(r) != len(item["turn_spans"]):
            raise RuntimeError(f"step-reward service gave {len(r)} rewards for {len(item['turn_spans'])} turns")
        new = scores.reshape(-1).clone().float()
        if len(r):
            pos = torch.tensor([b - 1 - item["prompt_length"] for _, b in item["turn_spans"]], dtype=torch.long)
            new.index_add_(0, pos, torch.tensor([float(x) for x in r], dtype=new.dtype))
        out.append(new.to(scores.dtype))
    return out


# ------------------------------------------------------------------------------------------- hooks


def _run(coro):
    """Run a coroutine from the (synchronous) trainer code."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # called inside a running loop: use a fresh one
        return pool.submit(asyncio.run, coro).result()


class StepRewardHooks:
    """The trainer side of the step-reward service (see the module docstring). ``service`` injects an in-process
    :class:`~spa_reward.steprm.service.StepRewardModel` or actor handle (tests); otherwise ``start()`` makes the
    named Ray actor."""

    def __init__(self, config: Any, tokenizer: Any = None, service: Any = None):
        self.config = config
        self.tokenizer = tokenizer
        self.plan = service_plan(config)
        self.handle = service
        self.reward_scale = float(_get(config, "env.reward_scale", 1.0) or 1.0)
        # StepAgent implicit / irl: which policy turns get the model's reward (read once, not per batch)
        self.stepagent_turns = None
        if self.stepagent:
            from spa_reward.stepagent.settings import StepAgentSettings

            self.stepagent_turns = StepAgentSettings.from_config(config).prm_turns
        # restart detection: what the service must be at the next call ({"incarnation", "version"}; None until
        # the first call), restarts seen, and the newest checkpoint state of this run (path, version)
        self.expected: Optional[dict[str, Any]] = None
        self.restarts = 0
        self.last_saved: Optional[tuple[str, int]] = None
        self._ray_restarts_base: Optional[int] = None
        self.run_token = uuid.uuid4().hex  # the published state belongs to this trainer process

    @property
    def active(self) -> bool:
        return self.plan is not None

    @property
    def trains(self) -> bool:
        return self.plan is not None and self.plan["kind"] in TRAINING_KINDS

    @property
    def scores_turns(self) -> bool:
        """The service's reward is added on every policy turn of ``rm_scores`` (istar, StepAgent implicit / irl)."""
        return self.plan is not None and self.plan["kind"] in SCORING_KINDS

    @property
    def stepagent(self) -> bool:
        return self.plan is not None and self.plan["kind"].startswith("stepagent_")

    @property
    def implicit(self) -> bool:
        return self.plan is not None and self.plan["kind"] == "implicit"

    def start(self) -> None:
        if self.plan is None or self.handle is not None:
            return
        plan = self.plan
        if plan["kind"] in ("progress_frozen", "progress_online") and plan["settings"].get("model_path"):
            from spa_reward.progress.serve import check_estimator_layout, check_estimator_objective

            # the run's layout and objective = the estimator's
            check_estimator_layout(plan["settings"]["model_path"], _get(self.config, "env.history", "full"),
                                   _get(self.config, "env.history_length"))
            check_estimator_objective(plan["settings"]["model_path"], spa_objective(self.config))
        if plan["kind"] == "progress_frozen":
            from spa_reward.progress.serve import check_tokenizer_compatible, get_progress_scorer

            if self.tokenizer is not None:
                check_tokenizer_compatible(plan["settings"]["model_path"], self.tokenizer)
            if plan["ranks"] > 1:  # data-parallel scoring on a sharded group (spa_reward.steprm.sharded)
                from spa_reward.steprm.service import start_service

                objective = spa_objective(self.config)
                self.handle = start_service({"objective": "progress", "online": False, "loss": objective,
                                             "model_path": os.path.expanduser(str(plan["settings"]["model_path"]))},
                                            name=plan["name"], num_gpus=plan["num_gpus"], timeout_s=plan["timeout_s"],
                                            ranks=plan["ranks"])
                return
            self.handle = get_progress_scorer(plan["settings"]["model_path"], name=plan["name"],
                                              num_gpus=plan["num_gpus"], timeout_s=plan["timeout_s"])
            return
        from spa_reward.steprm.service import start_service

        if plan["kind"] == "progress_online" and self.tokenizer is not None:
            from spa_reward.progress.serve import check_tokenizer_compatible

            check_tokenizer_compatible(plan["settings"]["model_path"], self.tokenizer)
        # implicit / stepagent: the PRM starts from the policy checkpoint, so it shares the policy's tokenizer
        self.handle = start_service(plan["settings"], name=plan["name"], num_gpus=plan["num_gpus"],
                                    timeout_s=plan["timeout_s"], state_dir=self.rolling_dir(),
                                    run_token=self.run_token, publish_every=plan.get("publish_every", DEFAULT_PUBLISH_EVERY),
                                    ranks=plan["ranks"])

    def rolling_dir(self) -> Optional[str]:
        """``<trainer.default_local_dir>/steprm_latest`` (absolute), where the online service publishes its state
        after every update; None without ``trainer.default_local_dir`` (a restarted actor then refuses to serve)."""
        root = _get(self.config, "trainer.default_local_dir")
        return os.path.join(os.path.abspath(os.path.expanduser(str(root))), ROLLING_DIR) if root else None

    async def _invoke(self, method: str, *args):
        fn = getattr(self.handle, method)
        if hasattr(fn, "remote"):
            from spa_reward.steprm.service import call_service

            self.handle, result = await call_service(self.handle, self.plan["name"], method, *args)
            return result
        result = fn(*args)
        return await result if inspect.isawaitable(result) else result

    @property
    def _versioned(self) -> bool:
        """The service takes ``update(batch, base_version)`` (the actor, in Ray or in process)."""
        from spa_reward.steprm.service import StepRewardServiceActor

        handle = self.handle
        return hasattr(getattr(handle, "update", None), "remote") or isinstance(handle, StepRewardServiceActor)

    async def _call(self, method: str, *args):
        """``method`` on the service; for a training service first :meth:`_verify` it is the one expected."""
        if not self.trains or method not in ("score", "update", "save", "load"):
            return await self._invoke(method, *args)
        await self._verify(restoring=method == "load")
        if method == "update" and self._versioned:
            args = (*args, self.expected["version"])
        result = await self._invoke(method, *args)
        if method == "update":
            self.expected["version"] += 1
            got = result.get("steprm/version") if isinstance(result, dict) else None
            if got is not None and int(got) != self.expected["version"]:
                raise RuntimeError(f"the step-reward service {self.plan['name']!r} answered an update with version "
                                   f"{int(got)}, the trainer expects {self.expected['version']}")
            result = {**result, "steprm/restarts": float(self.restarts)}
        elif method == "load":
            self.expected = None  # the loaded version is the new expectation
            await self._verify()
        return result

    async def _verify(self, restoring: bool = False) -> None:
        """Compare the service's ``info()`` with :attr:`expected`: a new incarnation is a restart (counted; the
        actor restored itself from its published state); an actor that could not restore itself is loaded from
        this run's last checkpoint when that is at the expected version, else the run stops; a version other than
        the expected one stops the run. ``restoring``: a load follows, so neither is an error yet."""
        name = self.plan["name"]
        info = await self._invoke("info")
        incarnation, version = info.get("incarnation"), int(info["version"])
        ray_restarts = info.get("ray_restarts")
        if self.expected is None:
            self.expected = {"incarnation": incarnation, "version": version}
            self._ray_restarts_base = ray_restarts if isinstance(ray_restarts, int) else None
        elif incarnation != self.expected["incarnation"]:
            # Ray's count (when it gives one) also covers restarts between two calls of the trainer
            base = self._ray_restarts_base
            ray_seen = ray_restarts - base if isinstance(ray_restarts, int) and base is not None else 0
            self.restarts = max(self.restarts + 1, ray_seen)
            logger.warning("step-reward service %r was restarted (restarts seen by the trainer: %d; Ray's count: %s; "
                           "restored from %s)", name, self.restarts, ray_restarts, info.get("restored_from"))
            self.expected["incarnation"] = incarnation
        if restoring:
            return
        if info.get("not_restored"):
            saved = self.last_saved
            if saved is None or saved[1] != self.expected["version"]:
                last = f"{saved[0]} at version {saved[1]}" if saved else "none"
                raise RuntimeError(
                    f"the online step-reward service {name!r} was restarted and could not restore itself "
                    f"({info['not_restored']}); the trainer expects version {self.expected['version']} and this run "
                    f"has no checkpoint at that version (last saved: {last}). "
                    "Stopping rather than training on rewards of a different model: restart the run from its last "
                    "checkpoint (trainer.resume_mode=auto)")
            logger.warning("step-reward service %r was not restored by itself; loading this run's checkpoint %s "
                           "(version %d)", name, saved[0], saved[1])
            await self._invoke("load", saved[0])
            info = await self._invoke("info")
            version = int(info["version"])
        if version != self.expected["version"]:
            raise RuntimeError(
                f"the online step-reward service {name!r} is at version {version} (incarnation "
                f"{info.get('incarnation')}, restarted by Ray: {info.get('restarted')}, restored from "
                f"{info.get('restored_from')}), but the trainer's last update left it at version "
                f"{self.expected['version']}: its rewards would come from a different model. Stopping: restart the "
                "run from its last checkpoint (trainer.resume_mode=auto)")

    def process(self, columns: dict[str, Any], metrics: dict) -> Optional[list[torch.Tensor]]:
        """The per-batch step on plain columns (lists of per-row tensors / values): returns the new per-row
        ``rm_scores`` for ``istar`` and StepAgent implicit / irl (None otherwise) and trains an online service
        afterwards. StepAgent needs ``columns["stepagent"]`` (the agent loop's per-row dict) and takes the optional
        ``columns["step_index"]`` (window layout). The optional ``columns["episode"]`` (``{uid}_{session_id}`` per
        row, :meth:`on_batch` fills it from the TransferQueue keys) groups the rows of a window-layout session into
        one training episode; without it every row is an episode."""
        if not self.trains:
            return None
        items, trainable = episode_items(
            columns["prompts"], columns["responses"], columns["response_mask"], columns["uid"],
            columns["episode_info"], columns["episode_reward"],
            columns.get("old_log_probs") if self.implicit and self._rollout_reference else None, self.reward_scale,
            columns.get("episode"))
        new_scores = None
        if self.scores_turns:
            start = time.perf_counter()
            rewards = _run(self._call("score", items))  # pre-update weights: the update below comes after
            metrics["timing_s/spa/steprm_score"] = time.perf_counter() - start
            if self.stepagent and self.stepagent_turns == "compared":
                keep = compared_turns(items, columns["stepagent"], columns.get("step_index"))
                rewards = [[x if k else 0.0 for x, k in zip(r, ks)] for r, ks in zip(rewards, keep)]
            new_scores = add_step_rewards(columns["rm_scores"], items, rewards)
            flat = [x for r in rewards for x in r]
            if flat:
                metrics["steprm/step_reward_mean"] = float(sum(flat) / len(flat))
                metrics["steprm/step_reward_abs_max"] = float(max(abs(x) for x in flat))
        if self.stepagent:
            if "stepagent" not in columns:
                raise RuntimeError("algorithm.reward=stepagent needs the agent loop's 'stepagent' field per row "
                                   "(recipe.spa expert-prefix episodes, algorithm.stepagent.expert_path)")
            train, counts = stepagent_pairs(items, trainable, columns["stepagent"], columns.get("step_index"))
            metrics.update(counts)
        else:
            train = [it for it, ok in zip(items, trainable) if ok]
        metrics["steprm/skipped_episodes"] = float(skipped_episodes(items, trainable))
        if train:
            start = time.perf_counter()
            metrics.update(_run(self._call("update", train)))
            metrics["timing_s/spa/steprm_update"] = time.perf_counter() - start
        return new_scores

    @property
    def _rollout_reference(self) -> bool:
        return str(self.plan["settings"].get("reference", "rollout")) == "rollout"

    def on_batch(self, batch: Any, metrics: dict) -> None:
        """TransferQueue glue of :meth:`process` for verl's ``_compute_advantage`` (``batch``: a KVBatchMeta)."""
        if not self.trains:
            return
        import transfer_queue as tq

        fields = ["prompts", "responses", "response_mask", "uid", "episode_info", "episode_reward", "rm_scores"]
        if self.implicit and self._rollout_reference:
            fields.append("old_log_probs")
        if self.stepagent:
            fields.append("stepagent")
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        missing = [f for f in fields if f not in data.keys()]
        if missing:
            raise RuntimeError(f"the step-reward service needs the rollout fields {missing} (env_agent agent loop; "
                               "old_log_probs come from verl's old-log-prob step)")
        from spa_reward.trainer import column

        cols = {}
        for name in fields:
            value = data[name]
            if isinstance(value, torch.Tensor):
                cols[name] = list(value.unbind()) if value.is_nested else list(value)
            else:
                cols[name] = column(data, name)
        from spa_reward.trainer import session_layout  # {uid}_{session_id}_{index}: one session = one episode

        sessions, step_index, _ = session_layout(list(batch.keys))
        cols["episode"] = list(sessions)
        cols["step_index"] = [int(x) for x in step_index]
        new_scores = self.process(cols, metrics)
        if new_scores is not None:
            from verl.utils import tensordict_utils as tu

            nested = torch.nested.as_nested_tensor(new_scores, layout=torch.jagged)
            tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id,
                            fields=tu.get_tensordict({"rm_scores": nested}))

    def save(self, step_dir: str | os.PathLike) -> None:
        if self.trains:
            path = os.path.abspath(os.path.join(str(step_dir), STATE_DIR))  # the actor's cwd may differ
            _run(self._call("save", path))
            self.last_saved = (path, self.expected["version"])

    def load(self, step_dir: str | os.PathLike) -> None:
        if not self.trains:
            return
        path = os.path.join(str(step_dir), STATE_DIR)
        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"resuming from {str(step_dir)!r}, which has no step-reward model state ({STATE_DIR}/): the online "
                f"{self.plan['kind']} service would restart from its initial weights and give different rewards. "
                "Resume from a checkpoint written by this run, or set trainer.resume_mode=disable"
            )
        _run(self._call("load", path))
        self.last_saved = (path, self.expected["version"])


def prune_rotated_states(root: str | os.PathLike, current_step: int) -> list[str]:
    """Remove ``<root>/global_step_M/steprm`` for every M < ``current_step`` whose ``actor/`` verl's checkpoint
    rotation has removed (``trainer.max_actor_ckpt_to_keep``: verl deletes only the ``actor`` folders it saved),
    so the step-reward state lives exactly as long as the actor checkpoint it belongs to. Returns what it
    removed."""
    import re
    import shutil

    removed = []
    if not os.path.isdir(str(root)):
        return removed
    for name in os.listdir(str(root)):
        m = re.fullmatch(r"global_step_(\d+)", name)
        step_dir = os.path.join(str(root), name)
        state = os.path.join(step_dir, STATE_DIR)
        if m and int(m.group(1)) < current_step and os.path.isdir(state) and not os.path.isdir(
                os.path.join(step_dir, "actor")):
            shutil.rmtree(state, ignore_errors=True)
            removed.append(state)
    return sorted(removed)


__all__ = ["ROLLING_DIR", "STATE_DIR", "StepRewardHooks", "add_step_rewards", "episode_items", "service_plan",
           "compared_turns", "prune_rotated_states", "skipped_episodes", "stepagent_pairs"]


def plan_problems(cfg: Any) -> list[str]:
    """Config problems of the step-reward service (for ``spa_reward.config_check``), naming the key to set."""
    plan = service_plan(cfg)
    if plan is None:
        return []
    ranks = _rank_problems(plan)
    if plan["kind"] == "progress_frozen":
        return ranks
    block = PLAN_BLOCKS[plan["kind"]]
    settings = dict(plan["settings"])
    if settings.get("model_path") is None and settings.get("backbone_config") is None:
        return [f"{block}: no model to start from (set {block}.model_path"
                + (" or actor_rollout_ref.model.path)" if plan["kind"] != "progress_online" else
                   "; online SPA trains algorithm.spa.estimator_path)")]
    try:
        StepRMSettings.from_dict(settings)
    except (ValueError, TypeError) as e:
        return [f"{block}: {e}"]
    problems = ranks
    if not ranks and settings.get("lora_r") and plan["ranks"] > 1:
        problems.append(f"{block}.lora_r={settings['lora_r']} with {plan['ranks']} ranks: a sharded service trains "
                        "the whole model; LoRA already fits one GPU (set the ranks to 1)")
    if plan["num_gpus"] < 0:
        problems.append(f"{block}.num_gpus={plan['num_gpus']} must be >= 0")
    if not plan["timeout_s"] > 0:
        problems.append(f"{block}.start_timeout_s={plan['timeout_s']} must be > 0")
    every = plan.get("publish_every", DEFAULT_PUBLISH_EVERY)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        problems.append(f"{block}.publish_every={every!r} must be an integer >= 1 (updates between two full states "
                        "the online service publishes for a restart when no checkpoint comes in between)")
    return problems


def _rank_problems(plan: dict) -> list[str]:
    """The service's ranks against its GPUs: a whole number >= 1, one GPU per rank when it has GPUs."""
    spa = plan["kind"].startswith("progress")
    block = "algorithm.spa" if spa else PLAN_BLOCKS[plan["kind"]]
    rk, gk = (f"{block}.scorer_ranks", f"{block}.scorer_num_gpus") if spa else (f"{block}.ranks", f"{block}.num_gpus")
    ranks, gpus = plan["ranks"], plan["num_gpus"]
    if isinstance(ranks, bool) or not isinstance(ranks, int) or ranks < 1:
        return [f"{rk}={ranks!r} must be an integer >= 1 (the step-reward model's ranks; null = one per GPU of {gk})"]
    if ranks > 1 and gpus > 0 and gpus != ranks:
        return [f"{gk}={gpus:g} with {rk}={ranks}: a sharded service has one GPU per rank (set {gk}={ranks}, or "
                f"{gk}=0 for CPU ranks)"]
    if ranks == 1 and gpus > 1:
        return [f"{gk}={gpus:g}: one actor uses one GPU; a whole number of GPUs >= 2 shards the model over that many "
                f"ranks ({rk}=null)"]
    return []
