"""Does it learn? A CPU credit-assignment benchmark: GRPO vs GiGPO vs SPA vs iStar vs StepAgent on one small task
with delayed reward.

The task (``LockEnv``, a :class:`envs.base.TextEnv`): open a combination lock of ``n_stages`` stages by pulling
levers. At every stage one lever advances the lock, ``n_traps`` levers reset it to stage 0, ``n_invalid`` levers
are stuck (the env does not execute them: g_t = 0) and the rest move without effect (distractors). Which lever
does what depends on the task (``n_tasks`` locks) and the stage. The only reward is R = 1 when the lock opens
within ``max_steps`` steps (0 otherwise), so the few decisive steps must be found among many that did nothing or
undid the progress. Every state has an anchor (task and stage, what GiGPO matches on) and every step a known true
worth: (stage after - stage before) / n_stages (1/K for an advance, minus the lost progress for a trap, 0 else).
Two variants (``--variants``): ``lock`` (above: opening ends the episode, so a short episode means a win) and
``fixed`` (every episode runs ``max_steps`` steps, an open lock stays open, R = final stage / n_stages on the last
step: partial credit equal to the sum of the steps' worth, and the length of an episode says nothing about R).

The paper's pipeline (``--init sft``, the default): an imitation (SFT) stage first clones a noisy expert
(:class:`NoisyExpert`: the advancing lever with probability 1 - ``--sft-noise`` + noise/n, else uniform;
``--sft-episodes`` demonstrations, ``--sft-steps`` Adam steps of cross-entropy; :func:`pretrain_policy`), and every
method of a seed starts from that same policy; spa explores with it. Its success rate is printed and kept in the
table's header (0.19 on lock and 0.20 on fixed with the defaults, mean of 5 seeds). ``--init scratch`` starts from the uniform policy.

The policy is a tiny MLP over the current observation and the previous action (CPU, torch), sampled at
temperature 1; the update is PPO-clip on per-step log-probs. Everything between rollout and update is the project's
own code on verl-shaped tensors, exactly as in a verl run:

* rewards: ``spa_reward.fusion`` (``outcome_turn_rewards`` for the baselines, ``fuse_turn_rewards`` r_t =
  alpha*c_t + G_t for spa, ``algorithm.spa.grounding``), placed on each turn's last token by ``place_turn_rewards`` (dense
  ``token_level_rewards``, ``response_mask`` = 1 on the action token of each turn, 0 on the observation tokens
  between turns, ``uid`` = one id per group of 8);
* advantages: verl's own ``compute_advantage_for_multi_trajectories`` (what the v1 trainer's
  ``_compute_advantage`` calls) with ``config=algorithm``, which dispatches to verl's GRPO or to our registered
  ``gigpo``/``spa`` (``import spa_reward.register``); the per-turn anchors and the env's episode reward reach them
  through ``spa_reward.advantage.estimator_inputs``, the same context the ``spa`` trainer mode uses;
* critic methods (``ppo``, ``spa_critic``, ``spa_paper``, ...): a value MLP V(s_t) over the policy's input whose
  values reach the ``spa`` estimator as the trainer passes the critic's values (on each turn's first token), so it
  runs GAE over turns (``examples/rl_ppo.sh``, ``SPA_CRITIC=1``); the critic regresses the returns it gives (MSE,
  ``--critic-lr``);
* the progress estimator (spa): exploration episodes of the initial policy -> ``TrajectoryRecord`` files ->
  ``spa_reward.progress.train --objective <algorithm.spa.objective>`` (tiny Llama from a config) ->
  ``ProgressScorer`` (the serving class the reward manager uses) scores every RL batch. The paper's pipeline in
  miniature; the estimator's attribution is measured on 256 held-out episodes of the same policy.
* the step-reward service (``spa_online``, ``istar``): ``spa_reward.steprm.trainer_hooks.StepRewardHooks`` built
  from the method's ``algorithm`` block (the trainer's own plan: objective, online, beta, reference, replay
  window), serving from an in-process ``spa_reward.steprm.service.StepRewardModel`` (the Ray actor's body) on CPU.
  Every batch goes through ``StepRewardHooks.process`` on the columns ``on_batch`` reads from TransferQueue
  (:func:`trainer_columns`): score with the pre-update weights, then one ``update`` on the batch.

  - ``spa_online`` / ``spa_online_sum``: ``algorithm.spa.online.enable=true`` (objective ``progress``, replay window
    4, one step per batch, the recipe's values) with the prefix / sum estimator objective, starting from the offline
    estimator ``spa`` / ``spa_sum`` trains (cached per seed); c_t scored by the service as the ``spa`` reward
    manager does, fused as ``spa`` does (alpha 1, grounding penalty 0.1).
  - ``istar`` (``algorithm.reward=istar algorithm.adv_estimator=spa algorithm.spa.mode=rloo``, as
    ``examples/rl_istar.sh``): the env part of the ``istar`` reward manager (grounding_beta g_t = 0, R as the
    episode reward), then r_t = beta * q_t (beta 0.05) added on each turn's token by ``add_step_rewards``, and one
    trajectory-DPO update per batch. The PRM is a tiny causal Llama built from a config over the lock vocabulary.
    The paper starts the PRM from the policy, so q_t = log pi_phi - log pi_old starts near 0; the MLP policy here
    cannot be a causal LM, so with ``reference=rollout`` (pi_ref = the MLP's old log-prob of the chosen lever,
    placed on the action token, what the trainer sends) q_t starts as log pi_phi(lever) over the whole vocabulary
    minus log pi_old(lever) over the levers: a per-turn offset (cancelled by the rloo step baseline when it is
    constant) plus an exploration bonus -log pi_old(a_t). That is iStar's formula, not its initial condition, so
    ``istar_frozen`` (``algorithm.istar.reference=frozen``: pi_ref = a frozen copy of the initial PRM, q_t = 0
    exactly before the first update) is the closest faithful variant and is run beside it.
  The PRM / online learning rates are the benchmark's (``--online-lr``, ``--prm-lr``, default 1e-3 for models of
  a few thousand weights trained from scratch); the recipe's 1e-5 / 1e-6 are for billion-weight checkpoints.
* StepAgent (``stepagent*``, ``algorithm.reward=stepagent``, ``examples/rl_stepagent.sh``'s defaults: ADV=spa,
  mean_norm, match_reward 1, grounding_beta 0): the lock's expert pulls the advancing lever of each stage
  (:func:`lock_expert`, L = n_stages). Each training episode starts from an expert prefix as the recipe's agent loop
  plays it (``recipe.spa.expert_prefix``): k = ``spa_reward.stepagent.settings.prefix_length(prefix, L, step,
  reverse_steps, seed, key=task_id)`` (step = the iteration + 1, as verl's ``global_steps``; seed = the run seed;
  one k per group), the first k expert levers are stepped in the env (they count toward ``max_steps``) and sit in
  the response with mask 0 (context: no log-prob, no advantage, no reward); the policy's first step is compared
  with a*_k by ``Inspection.compare`` and the episode carries the agent loop's ``stepagent`` dict
  (context_length, expert_reply_ids = the expert lever's token, compared, match). Rewards: the ``stepagent``
  reward manager's (``spa_reward.fusion.stepagent_turn_rewards``): ``stepagent`` (+-1 on the compared turn, R on
  the last; uniform k), ``stepagent_reverse`` (the reverse curriculum, k from L-1 to 0 over ``--reverse-steps``,
  default half the iterations, so the second half trains from the start state like every other method);
  ``stepagent_irl`` / ``stepagent_implicit`` add the step-reward service's reward on every policy turn through
  ``StepRewardHooks.process`` with the ``stepagent`` column (discriminator clip(logit) / beta q_t with a frozen
  reference) and train it on the batch's unmatched compared turns (tiny models over the lock vocabulary, as
  ``istar``); ``stepagent_irl_8steps`` (diagnostic) gives the discriminator 8 optimiser steps per batch instead of
  the recipe's 1. A prefix makes the task shorter, so a StepAgent method's success is measured on an extra batch
  per iteration from the start state (the same tasks, same size, temperature 1, never trained on; counted in the
  table's ``extra episodes``); ``train_success`` (with prefixes), ``match_rate`` and ``prefix_mean`` (mean k) are
  kept in the JSON.

Methods are the entries of ``METHODS`` (name -> reward function, advantage estimator, algorithm overrides,
optional preparation step, expert-prefix flag, critic flag). Default (``DEFAULT_METHODS``): ``grpo``, ``gigpo``,
``ppo`` (outcome R; ppo with a critic), ``spa`` (``examples/rl_spa.sh``'s defaults = the recipe yaml's: prefix
objective, grounding penalty 0.1, no critic), ``spa_sum`` (the paper's objective, the rest as spa), ``spa_critic``,
``spa_paper`` (the paper's literal setting: sum objective, bonus 0.5, critic), ``spa_oracle`` (diagnostic: c_t = the
true worth), ``spa_online`` (the estimator keeps training online), ``istar``, ``istar_frozen`` and the StepAgent
methods ``stepagent``, ``stepagent_reverse``, ``stepagent_irl``, ``stepagent_implicit``. ``--methods grounding``
runs ``GROUNDING_METHODS`` (the grounding trap: bonus vs penalty, learned vs perfect c_t, with and without a
critic); ``grpo_pen``, ``spa_online_sum``, ``stepagent_irl_all``, ``stepagent_irl_8steps`` run by name. Every method
gets the same starting policy, optimiser, seeds, tasks and RL episode budget and the recipe's ``algorithm`` block
(``recipe/spa/config/spa_trainer.yaml``: gamma 0.95, no invalid penalty, mean_norm); only each method's own knobs
differ. spa's exploration episodes come on top of the RL budget and are reported in the table.

Output (``--out-dir``): ``learning.png`` (success rate vs RL episodes as small multiples: one row per task variant,
one panel per method family, mean over seeds with a min-max band; grpo and gigpo drawn thin in every panel),
``learning_credit.png`` (the same grid: per-step Pearson of each method's advantage A_t and of its step reward c_t
with the true worth over training), ``learning.md`` (the imitation stage's success, then one table row per task
variant and method), ``learning.json`` (every curve).

    python benchmarks/bench_learning.py [--quick] [--seeds 5] [--variants lock fixed] [--methods grpo gigpo spa]
    python benchmarks/bench_learning.py --from-json DIR/learning.json --out-dir DIR2   # redraw only
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root: envs, spa_reward

import argparse
import json
import logging
import math
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from envs.base import TextEnv
from spa_reward.fusion import fuse_turn_rewards, outcome_turn_rewards, place_turn_rewards

RECIPE_YAML = Path(__file__).resolve().parent.parent / "recipe" / "spa" / "config" / "spa_trainer.yaml"

# ---------------------------------------------------------------------------------------------------- the task

EVENTS = ("start", "advance", "reset", "stuck", "moved")  # what the last pull did, shown in the observation
SPECIAL = ("<pad>", "<bos>", "<task>", "<obs>", "<none>")  # <none>: no previous action (policy input only)


@dataclass(frozen=True)
class LockTask:
    """Layout of the lock tasks; ``layout_seed`` fixes which lever does what (same for every run seed)."""

    n_tasks: int = 8
    n_stages: int = 4
    n_actions: int = 8
    n_traps: int = 1
    n_invalid: int = 2
    max_steps: int = 16
    layout_seed: int = 0
    # False: opening the lock ends the episode (R = 1), so a short episode means a win. True (the "fixed" variant):
    # every episode runs max_steps steps, an open lock stays open, and R = final stage / n_stages (partial credit,
    # the sum of the steps' true worth), so the length of an episode says nothing about R
    fixed_length: bool = False

    def __post_init__(self):
        if self.n_tasks < 1 or self.n_stages < 1 or self.max_steps < self.n_stages:
            raise ValueError(f"need n_tasks >= 1, n_stages >= 1, max_steps >= n_stages; got {self}")
        if 1 + self.n_traps + self.n_invalid > self.n_actions:
            raise ValueError(
                f"n_actions={self.n_actions} leaves no room for 1 advancing lever + n_traps={self.n_traps} + "
                f"n_invalid={self.n_invalid}; raise n_actions or lower the others"
            )


class Vocab:
    """Word-level vocabulary shared by the policy and the progress estimator (every observation word is a token)."""

    def __init__(self, task: LockTask):
        words = list(SPECIAL) + [f"task{i}" for i in range(task.n_tasks)]
        words += [f"stage{s}" for s in range(task.n_stages + 1)] + list(EVENTS)
        words += [f"lever{a}" for a in range(task.n_actions)]
        self.ids = {w: i for i, w in enumerate(words)}
        self.size = len(words)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.ids[w] for w in text.split()]
        except KeyError as exc:
            raise ValueError(f"word {exc.args[0]!r} of {text!r} is not in the lock vocabulary") from None


def lock_layout(task: LockTask) -> np.ndarray:
    """(n_tasks, n_stages, n_actions) role of each lever: 0 distractor, 1 advance, 2 trap, 3 stuck (invalid)."""
    rng = np.random.default_rng(task.layout_seed)
    roles = np.zeros((task.n_tasks, task.n_stages, task.n_actions), dtype=np.int64)
    for t in range(task.n_tasks):
        for s in range(task.n_stages):
            perm = rng.permutation(task.n_actions)
            roles[t, s, perm[0]] = 1
            roles[t, s, perm[1 : 1 + task.n_traps]] = 2
            roles[t, s, perm[1 + task.n_traps : 1 + task.n_traps + task.n_invalid]] = 3
    return roles


class LockEnv(TextEnv):
    """Combination-lock env behind the project's TextEnv contract (reset/step/info with won, executable, anchor).

    Observation: ``"task<i> stage<s> <event>"``; actions: ``"lever<k>"``. Extra step info: ``worth`` (the step's
    true worth) and ``event``. Reward 1 on the step that opens the lock, else 0.
    """

    name = "lock"

    def __init__(self, task: LockTask = LockTask()):
        super().__init__(max_steps=task.max_steps)
        self.task = task
        self.roles = lock_layout(task)
        self.actions = [f"lever{a}" for a in range(task.n_actions)]
        self._lock = 0
        self._stage = 0

    def list_tasks(self, split: str) -> list[str]:
        if split != "train":
            raise ValueError(f"lock env has only the 'train' split (the benchmark measures learning), got {split!r}")
        return [f"lock-{i}" for i in range(self.task.n_tasks)]

    def _obs(self, event: str) -> str:
        return f"task{self._lock} stage{self._stage} {event}"

    def _anchor_key(self) -> str:
        return f"lock-{self._lock}|stage{self._stage}"

    def _reset(self, task_id: str, seed: int | None) -> tuple[str, dict]:
        try:
            lock = int(task_id.removeprefix("lock-"))
        except ValueError:
            lock = -1
        if not 0 <= lock < self.task.n_tasks:
            raise ValueError(f"unknown lock task {task_id!r}; tasks are lock-0 .. lock-{self.task.n_tasks - 1}")
        self._lock, self._stage = lock, 0
        return self._obs("start"), {
            "goal": f"open lock {lock}", "anchor": self._anchor_key(), "admissible_actions": list(self.actions)
        }

    def _carry_info(self) -> dict:
        return {"admissible_actions": list(self.actions), "worth": 0.0, "event": "stuck"}

    def _no_op(self, reason: str) -> tuple[str, dict]:
        return self._obs("stuck"), self._carry_info()

    def _step(self, action: str) -> tuple[str, float, bool, dict]:
        if action not in self.actions:
            return self._obs("stuck"), 0.0, False, {**self._carry_info(), "executable": False}
        before = self._stage
        role = 0 if before == self.task.n_stages else int(self.roles[self._lock, before, self.actions.index(action)])
        event = {0: "moved", 1: "advance", 2: "reset", 3: "stuck"}[role]  # an open lock (fixed variant) stays open
        if role == 1:
            self._stage += 1
        elif role == 2:
            self._stage = 0
        won = self._stage == self.task.n_stages
        reward, done = float(won), won
        if self.task.fixed_length:  # R = the progress kept at the end, given on the last step; no early end
            done = False
            reward = self._stage / self.task.n_stages if self._steps + 1 >= self.max_steps else 0.0
        info = {
            "admissible_actions": list(self.actions), "executable": role != 3, "won": won, "score": float(won),
            "anchor": self._anchor_key(), "worth": (self._stage - before) / self.task.n_stages, "event": event,
        }
        return self._obs(event), reward, done, info


# ---------------------------------------------------------------------------------------------------- policy


class Policy(nn.Module):
    """MLP over [task, stage, last event, previous action] token embeddings -> logits over the levers."""

    def __init__(self, vocab_size: int, n_actions: int, dim: int = 16, hidden: int = 64):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.mlp = nn.Sequential(nn.Linear(4 * dim, hidden), nn.Tanh(), nn.Linear(hidden, n_actions))
        nn.init.zeros_(self.mlp[-1].weight)  # start uniform over the levers
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (N, 4) token ids -> logits (N, n_actions)."""
        return self.mlp(self.embed(feats).flatten(1))


class NoisyExpert(nn.Module):
    """The demonstrator of the imitation (SFT) stage, as logits over the levers: the advancing lever of the
    current (task, stage) with probability ``1 - noise`` plus ``noise / n_actions``, every other lever with
    ``noise / n_actions``; an open lock (fixed variant): uniform."""

    def __init__(self, task: LockTask, vocab: Vocab, noise: float):
        super().__init__()
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"the expert's noise must be in [0, 1], got {noise}")
        roles = lock_layout(task)
        advance = torch.full((vocab.size, vocab.size), -1, dtype=torch.long)  # (task word, stage word) -> lever
        for t in range(task.n_tasks):
            for st in range(task.n_stages):
                advance[vocab.ids[f"task{t}"], vocab.ids[f"stage{st}"]] = int(np.nonzero(roles[t, st] == 1)[0][0])
        self.register_buffer("advance", advance)
        self.noise, self.n_actions = float(noise), task.n_actions

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        lever = self.advance[feats[:, 0], feats[:, 1]]
        probs = torch.full((len(feats), self.n_actions), self.noise / self.n_actions)
        known = lever >= 0
        probs[known, lever[known]] += 1.0 - self.noise
        probs[~known] = 1.0 / self.n_actions
        return probs.log()


def pretrain_policy(seed: int, task: LockTask, vocab: Vocab, args) -> dict:
    """The imitation (SFT) stage of the paper's pipeline: behaviour cloning of :class:`NoisyExpert` episodes
    (``--sft-episodes`` of them, noise ``--sft-noise``), cross-entropy on every step, ``--sft-steps`` Adam steps
    of 256 steps each; then the cloned policy's success rate on a fresh batch (temperature 1). Cached per seed and
    task: every method of a seed starts from this policy, and spa explores with it. Returns ``{"state", "info"}``."""
    key = (seed, task, args.sft_episodes, args.sft_noise, args.sft_steps, args.hidden)
    if key in _SFT_CACHE:
        return _SFT_CACHE[key]
    gen = torch.Generator().manual_seed(30_000 + seed)
    expert = NoisyExpert(task, vocab, args.sft_noise)
    tasks = [f"lock-{i % task.n_tasks}" for i in range(args.sft_episodes)]
    demos = rollout(expert, task, vocab, tasks, [f"demo-{i}" for i in range(len(tasks))], gen)
    feats = torch.tensor([f for ep in demos for f in ep.feats])
    acts = torch.tensor([a for ep in demos for a in ep.actions])
    torch.manual_seed(seed)
    policy = Policy(vocab.size, task.n_actions, hidden=args.hidden)
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(40_000 + seed)
    for _ in range(args.sft_steps):
        idx = torch.randint(len(acts), (256,), generator=order)
        loss = nn.functional.cross_entropy(policy(feats[idx]), acts[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    check = rollout(policy, task, vocab, [f"lock-{i % task.n_tasks}" for i in range(512)],
                    [f"sft-{i}" for i in range(512)], torch.Generator().manual_seed(50_000 + seed))
    info = {"sft_success": float(np.mean([ep.won for ep in check])),
            "demo_success": float(np.mean([ep.won for ep in demos])), "sft_loss": float(loss.detach())}
    _SFT_CACHE[key] = {"state": {k: v.clone() for k, v in policy.state_dict().items()}, "info": info}
    return _SFT_CACHE[key]


_SFT_CACHE: dict = {}


def episode_features(eps: list) -> torch.Tensor:
    """(steps, 4) the policy's input of every step of ``eps``, episode after episode."""
    return torch.tensor([f for ep in eps for f in ep.feats])


def critic_values(critic: nn.Module, eps: list) -> list[list[float]]:
    """V(s_t) of every step (the critic reads what the policy reads), per episode."""
    with torch.no_grad():
        v = critic(episode_features(eps)).squeeze(-1).tolist()
    out, start = [], 0
    for ep in eps:
        out.append(v[start : start + len(ep.actions)])
        start += len(ep.actions)
    return out


def critic_update(critic: nn.Module, opt: torch.optim.Optimizer, eps: list, returns: torch.Tensor, args) -> float:
    """MSE of V(s_t) on the estimator's per-turn returns (turn GAE: A_t + V_t), ``args.ppo_epochs`` passes."""
    feats = episode_features(eps)
    target = torch.cat([returns[i, : len(ep.actions)] for i, ep in enumerate(eps)]).float()
    return fit(critic, opt, lambda: ((critic(feats).squeeze(-1) - target) ** 2).mean(), args.ppo_epochs)


def fit(module: nn.Module, opt: torch.optim.Optimizer, loss_of: Callable[[], torch.Tensor], passes: int) -> float:
    """``passes`` optimiser steps on ``loss_of()`` (gradient norm clipped at 1.0); returns the last loss."""
    loss_v = 0.0
    for _ in range(passes):
        loss = loss_of()
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        loss_v = float(loss.detach())
    return loss_v


@dataclass
class Episode:
    task_id: str
    uid: str
    prompt_ids: list[int]
    feats: list[list[int]] = field(default_factory=list)  # policy input per step
    actions: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    obs_ids: list[list[int]] = field(default_factory=list)  # observation tokens after each step (<obs> first)
    executable: list[bool] = field(default_factory=list)
    anchors: list[str] = field(default_factory=list)  # state each action acted on
    worth: list[float] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    reward: float = 0.0
    won: bool = False
    # StepAgent: the expert levers replayed before the policy acted, their response tokens (each lever token and the
    # observation after it; all mask 0: context, not policy turns) and the agent loop's ``stepagent`` dict
    prefix_actions: list[int] = field(default_factory=list)
    prefix_ids: list[int] = field(default_factory=list)
    stepagent: dict | None = None


def lock_expert(task: LockTask) -> dict:
    """The lock's expert demonstrations as ``envs.expert.ExpertDemo`` (what the recipe reads from
    ``algorithm.stepagent.expert_path``): per task, the advancing lever of each stage (L = n_stages actions) and the
    state anchor after each."""
    from envs.expert import ExpertDemo

    roles = lock_layout(task)
    demos = {}
    for t in range(task.n_tasks):
        levers = [int(np.nonzero(roles[t, s] == 1)[0][0]) for s in range(task.n_stages)]
        demos[f"lock-{t}"] = ExpertDemo(
            task_id=f"lock-{t}", env_name=LockEnv.name, actions=tuple(f"lever{a}" for a in levers),
            anchors=tuple(f"lock-{t}|stage{s + 1}" for s in range(task.n_stages)),
        )
    return demos


def play_expert_prefix(env: LockEnv, insp, ep: Episode, vocab: Vocab, obs: str, info: dict) -> tuple[str, dict]:
    """StepAgent inspection, as ``recipe.spa.expert_prefix`` runs it (packed layout): after the reset, step the
    expert's first ``insp.k`` actions in the env (they count toward ``max_steps``) and append each as response tokens
    with mask 0 (the lever token, then its observation); a step that does not execute or does not reach the demo's
    anchor stops the prefix (``diverged``: nothing is compared). Then fix what the first policy turn is compared
    with: a*_k, its reply tokens (the lever token) and ``context_length`` (tokens before that turn). Returns the
    observation and info of the state the policy acts on first."""
    insp.begin(env.max_steps, info)
    for j in range(insp.k):
        action = insp.demo.actions[j]
        obs, _, done, info = env.step(action)
        insp.prefix_turns = j + 1
        ep.prefix_actions.append(env.actions.index(action))
        ep.prefix_ids += [vocab.ids[action], vocab.ids["<obs>"]] + vocab.encode(obs)
        if done:  # k <= L - 1 advances cannot open the lock and k <= max_steps - 1 cannot truncate
            raise RuntimeError(f"the expert prefix of {ep.task_id} ended the episode after {j + 1} of k={insp.k}")
        if not info["executable"] or str(info["anchor"]) != insp.demo.anchors[j]:
            insp.diverged = True
            break
    if insp.will_compare:
        insp.expert_action = insp.demo.actions[insp.prefix_turns]
        insp.expert_reply_ids = [vocab.ids[insp.expert_action]]
        insp.context_length = len(ep.prompt_ids) + len(ep.prefix_ids)
    return obs, info


def rollout(policy: Policy, task: LockTask, vocab: Vocab, task_ids: list[str], uids: list[str],
            gen: torch.Generator, inspections: list | None = None) -> list[Episode]:
    """Play one episode per task id with the policy at temperature 1, all envs stepped in lockstep.

    ``inspections`` (StepAgent, one ``recipe.spa.expert_prefix.Inspection`` or None per episode): replay that
    episode's expert prefix first (:func:`play_expert_prefix`; the policy's first input is the state it reached and
    the last expert lever as the previous action), compare the first policy action with a*_k
    (``Inspection.compare``) and store the ``stepagent`` dict on the episode."""
    envs = [LockEnv(task) for _ in task_ids]
    eps, feats, active = [], [], []
    none_id = vocab.ids["<none>"]
    insps = inspections if inspections is not None else [None] * len(task_ids)
    for env, tid, uid, insp in zip(envs, task_ids, uids, insps):
        obs, info = env.reset(tid)
        words = vocab.encode(obs)
        ep = Episode(tid, uid, [vocab.ids["<bos>"], vocab.ids["<task>"]] + [vocab.ids["<obs>"]] + words)
        last = none_id
        if insp is not None:
            obs, info = play_expert_prefix(env, insp, ep, vocab, obs, info)
            words = vocab.encode(obs)
            last = vocab.ids[f"lever{ep.prefix_actions[-1]}"] if ep.prefix_actions else none_id
        ep.anchors.append(info["anchor"])
        eps.append(ep)
        feats.append(words + [last])
    active = list(range(len(envs)))
    with torch.no_grad():
        while active:
            x = torch.tensor([feats[i] for i in active])
            logp_all = torch.log_softmax(policy(x), dim=-1)
            acts = torch.multinomial(logp_all.exp(), 1, generator=gen).squeeze(1)
            still = []
            for j, i in enumerate(active):
                ep, a = eps[i], int(acts[j])
                ep.feats.append(feats[i])
                ep.actions.append(a)
                ep.logps.append(float(logp_all[j, a]))
                obs, reward, done, info = envs[i].step(envs[i].actions[a])
                words = vocab.encode(obs)
                ep.obs_ids.append([vocab.ids["<obs>"]] + words)
                ep.executable.append(bool(info["executable"]))
                ep.worth.append(float(info["worth"]))
                ep.events.append(info["event"])
                insp = insps[i]
                if insp is not None and len(ep.actions) == 1 and insp.will_compare:
                    insp.compare(envs[i].actions[a], bool(info["executable"]), str(info.get("anchor", "")))
                if done:
                    ep.reward, ep.won = float(reward), bool(info["won"])
                else:
                    ep.anchors.append(info["anchor"])
                    feats[i] = words + [vocab.ids[f"lever{a}"]]
                    still.append(i)
            active = still
    for ep, insp in zip(eps, insps):
        if insp is not None:
            ep.stepagent = insp.as_dict()
    return eps


# ---------------------------------------------------------------------------------------- verl-shaped batch


def response_layout(ep: Episode) -> tuple[list[int], list[int]]:
    """verl's response row after the prompt: the expert prefix's tokens (StepAgent; mask 0), then each turn = its
    action token (mask 1) then the next observation's tokens (mask 0), no observation after the last turn.
    Returns (response_mask, position of each turn's token)."""
    mask, pos = [0] * len(ep.prefix_ids), []
    for t in range(len(ep.actions)):
        pos.append(len(mask))
        mask.append(1)
        if t < len(ep.actions) - 1:
            mask += [0] * len(ep.obs_ids[t])
    return mask, pos


def estimator_sequence(ep: Episode, vocab: Vocab) -> tuple[list[int], list[int]]:
    """Full token sequence (prompt + response) for the progress estimator and the index of each turn's token."""
    ids, ends = list(ep.prompt_ids) + list(ep.prefix_ids), []
    for t, a in enumerate(ep.actions):
        ends.append(len(ids))
        ids.append(vocab.ids[f"lever{a}"])
        if t < len(ep.actions) - 1:
            ids += ep.obs_ids[t]
    return ids, ends


def to_record(ep: Episode, vocab: Vocab, index: int) -> dict:
    ids, ends = estimator_sequence(ep, vocab)
    return {
        "format_version": 1, "uid": ep.uid, "episode_id": f"explore-{index}", "env_name": "lock",
        "task_id": ep.task_id, "tokenizer": "lock-words", "input_ids": ids, "prompt_length": len(ep.prompt_ids),
        "turn_spans": [[e, e + 1] for e in ends], "executable": ep.executable, "reward": ep.reward, "won": ep.won,
        "actions": [f"lever{a} ({ev})" for a, ev in zip(ep.actions, ep.events)],
        "extra": {"true_contributions": ep.worth},
    }


def compute_advantages(eps: list[Episode], turn_rewards: list[list[float]], estimator: str, algo,
                       values: list[list[float]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-turn advantages and returns (bs, max_turns) through verl's advantage step on verl-shaped tensors.
    ``values`` (the critic's V(s_t) per turn; estimator ``spa``): placed on each turn's first token, as the trainer
    passes the critic's values, so ``spa`` runs GAE over turns."""
    from spa_reward.advantage import estimator_inputs
    from spa_reward.trainer import TURN_ESTIMATORS
    from verl.protocol import DataProto
    from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

    layouts = [response_layout(ep) for ep in eps]
    length = max(len(m) for m, _ in layouts)
    bs, max_t = len(eps), max(len(ep.actions) for ep in eps)
    mask = torch.zeros(bs, length)
    rewards = torch.zeros(bs, length)
    pos = torch.zeros(bs, max_t, dtype=torch.long)
    valid = torch.zeros(bs, max_t, dtype=torch.bool)
    token_values = torch.zeros(bs, length)
    for i, ((m, p), r) in enumerate(zip(layouts, turn_rewards)):
        mask[i, : len(m)] = torch.tensor(m, dtype=torch.float32)
        rewards[i] = torch.tensor(place_turn_rewards(r, p, length))  # one token per turn: it is its last token
        pos[i, : len(p)] = torch.tensor(p)
        valid[i, : len(p)] = True
        if values is not None:  # one token per turn: it is also its first
            token_values[i, torch.tensor(p)] = torch.tensor(values[i], dtype=torch.float32)
    uids = np.array([ep.uid for ep in eps], dtype=object)
    data = DataProto.from_dict(tensors={"token_level_rewards": rewards, "response_mask": mask},
                               non_tensors={"uid": uids})
    keys = [f"{ep.uid}_{i}_0" for i, ep in enumerate(eps)]  # one session per trajectory (verl's key format)
    inputs = {}
    if estimator in TURN_ESTIMATORS:  # what spa_reward.trainer.SpaTrainer._compute_advantage supplies
        inputs["turn_anchors"] = np.array([ep.anchors for ep in eps] + [None], dtype=object)[:-1]
        inputs["episode_rewards"] = np.array([ep.reward for ep in eps], dtype=np.float64)
    if values is not None:
        if estimator != "spa":
            raise ValueError(f"critic values reach only the spa estimator (turn GAE), not {estimator!r}")
        inputs["values"] = token_values
    with estimator_inputs(**inputs):
        out = compute_advantage_for_multi_trajectories(
            data, batch_keys=keys, adv_estimator=estimator, gamma=algo.gamma, lam=algo.get("lam", 1.0), num_repeat=1,
            norm_adv_by_std_in_grpo=algo.get("norm_adv_by_std_in_grpo", True), config=algo,
        )
    adv = out.batch["advantages"].gather(1, pos)
    ret = out.batch["returns"].gather(1, pos)
    return torch.where(valid, adv, torch.zeros_like(adv)), torch.where(valid, ret, torch.zeros_like(ret))


# ---------------------------------------------------------------------------------------------- methods


def outcome_rewards(eps: list[Episode], ctx: dict, algo) -> tuple[list[list[float]], dict]:
    """The baselines' reward (reward manager ``outcome``): R on the last turn, minus the invalid-action penalty."""
    return [outcome_turn_rewards(len(ep.actions), ep.reward, ep.executable, algo.invalid_penalty) for ep in eps], {}


def spa_rewards(eps: list[Episode], ctx: dict, algo) -> tuple[list[list[float]], dict]:
    """SPA's reward (reward manager ``spa``): r_t = alpha c_t + G_t (``algorithm.spa.grounding``) with c_t from the
    progress scorer."""
    return _fused(eps, ctx["scorer"].score(scorer_items(eps, ctx["vocab"])), algo)


def oracle_rewards(eps: list[Episode], ctx: dict, algo) -> tuple[list[list[float]], dict]:
    """SPA's reward with a perfect estimator: c_t = the step's true worth (a diagnostic upper bound)."""
    return _fused(eps, [ep.worth for ep in eps], algo)


def _fused(eps: list[Episode], contribs: list[list[float]], algo) -> tuple[list[list[float]], dict]:
    s = algo.spa
    rewards = [
        fuse_turn_rewards(c, ep.executable, alpha=s.alpha, beta=s.beta, outcome=ep.reward, outcome_coef=s.outcome_coef,
                          clip=s.clip, invalid_penalty=algo.invalid_penalty, grounding=s.grounding)[0]
        for c, ep in zip(contribs, eps)
    ]
    flat_c = [x for c in contribs for x in c]
    flat_w = [x for ep in eps for x in ep.worth]
    return rewards, {"c_worth_pearson": _pearson(flat_c, flat_w), "c_lag1_pearson": _lag1_pearson(contribs, eps)}


def task_tag(task: LockTask) -> str:
    """The task variant's name: ``lock`` (opening the lock ends the episode) or ``fixed`` (fixed length, partial
    credit)."""
    return "fixed" if task.fixed_length else "lock"


def scorer_items(eps: list[Episode], vocab: Vocab) -> list[dict]:
    """What the ``spa`` reward manager sends the scorer per episode: prompt + response ids, turn ends and starts
    (a turn is its lever token), prompt length and R."""
    items = []
    for ep in eps:
        ids, ends = estimator_sequence(ep, vocab)
        items.append({"input_ids": ids, "turn_ends": ends, "turn_starts": ends, "prompt_length": len(ep.prompt_ids),
                      "reward": ep.reward})
    return items


def prepare_spa(seed: int, policy: Policy, task: LockTask, vocab: Vocab, args, workdir: Path, algo=None) -> dict:
    """The paper's pipeline in miniature: the initial policy (the SFT policy, or the untrained one with
    ``--init scratch``) explores, the estimator is trained on its records with the method's
    ``algorithm.spa.objective`` (``spa_reward.progress.train --objective``), and ``ProgressScorer`` serves it.
    Attribution is measured on 256 held-out episodes of the same policy."""
    from spa_reward.progress import train as train_mod
    from spa_reward.progress.model import ProgressEstimator, ProgressEstimatorConfig, build_tiny_backbone_config
    from spa_reward.progress.serve import ProgressScorer
    from spa_reward.progress.synthetic import attribution_metrics
    from spa_reward.records import validate_record, write_records

    objective = str(algo.spa.objective) if algo is not None else "sum"
    key = (seed, task, objective, args.init, args.explore_episodes, args.est_epochs, args.est_lr, args.est_batch,
           args.est_hidden)
    if key in _ESTIMATOR_CACHE:  # spa variants of one seed share the exploration and the estimator
        return dict(_ESTIMATOR_CACHE[key])
    gen = torch.Generator().manual_seed(10_000 + seed)
    tasks = [f"lock-{i % task.n_tasks}" for i in range(args.explore_episodes)]
    eps = rollout(policy, task, vocab, tasks, [f"explore-{i // args.group_size}" for i in range(len(tasks))], gen)
    records = [validate_record(to_record(ep, vocab, i)) for i, ep in enumerate(eps)]
    work = workdir / f"spa-{task_tag(task)}-{args.init}-seed{seed}-{objective}"
    (work / "records.jsonl").unlink(missing_ok=True)
    write_records(work / "records.jsonl", records)
    torch.manual_seed(seed)
    config = ProgressEstimatorConfig(
        backbone_config=build_tiny_backbone_config(vocab_size=vocab.size, hidden_size=args.est_hidden, num_layers=2,
                                                   num_heads=4, max_position_embeddings=256),
        head="mlp", tokenizer="lock-words", max_length=256, pad_token_id=vocab.ids["<pad>"], objective=objective,
    )
    ProgressEstimator(config).save_pretrained(work / "init")
    t0 = time.time()
    train_mod.main([
        "--records", str(work / "records.jsonl"), "--model", str(work / "init"), "--output", str(work / "estimator"),
        "--lr", str(args.est_lr), "--weight-decay", "0.0", "--warmup-steps", "10", "--warmup-type", "linear",
        "--epochs", str(args.est_epochs), "--batch-size", str(args.est_batch), "--grad-accum", "1", "--seed", str(seed),
        "--logger", "none", "--no-progress-bar", "--no-plot", "--device", "cpu", "--log-every", "50",
        "--num-threads", str(args.threads), "--save-total-limit", "1", "--overwrite",
    ])
    scorer = ProgressScorer(work / "estimator", device="cpu", max_batch_size=64)
    held = rollout(policy, task, vocab, [f"lock-{i % task.n_tasks}" for i in range(256)],
                   [f"held-{i // args.group_size}" for i in range(256)], torch.Generator().manual_seed(60_000 + seed))
    pred = scorer.score(scorer_items(held, vocab))
    m = attribution_metrics(pred, [validate_record(to_record(ep, vocab, i)) for i, ep in enumerate(held)])
    info = {
        "objective": objective, "explore_episodes": len(eps), "explore_success": float(np.mean([ep.won for ep in eps])),
        "estimator_train_s": round(time.time() - t0, 1),
        "explore_step_pearson": m["step_pearson"], "explore_sum_mse": m["sum_mse"],
        "explore_lag1_pearson": _lag1_pearson(pred, held),
        "mean_c_by_event": _mean_by_event(pred, held),
        "mean_c_early_late": _mean_early_late(pred),
    }
    _ESTIMATOR_CACHE[key] = {"scorer": scorer, "vocab": vocab, "info": info, "estimator_dir": str(work / "estimator"),
                             "explore_eps": eps, "held_eps": held, "held_pred": pred}
    return dict(_ESTIMATOR_CACHE[key])


def _mean_early_late(values: list[list[float]], split: int = 5) -> dict[str, float]:
    """Mean c_t over steps 0..split-1 and over the later steps (the length shortcut shows as early >> late)."""
    early = [x for v in values for x in v[:split]]
    late = [x for v in values for x in v[split:]]
    return {"early": round(float(np.mean(early)), 4) if early else float("nan"),
            "late": round(float(np.mean(late)), 4) if late else float("nan")}


_ESTIMATOR_CACHE: dict = {}


# ------------------------------------------------------------------ step-reward service (online spa, istar)


def trainer_columns(eps: list[Episode], vocab: Vocab, turn_rewards: list[list[float]]) -> dict[str, list]:
    """The per-row columns ``StepRewardHooks.on_batch`` reads from TransferQueue in a verl run: ``prompts``,
    ``responses`` (action token + observation tokens per turn), ``response_mask``, ``uid``, ``episode_info``,
    ``episode_reward``, ``rm_scores`` (the reward manager's ``turn_rewards`` on each turn's last token) and
    ``old_log_probs`` (the rollout policy's log-prob of each response token: the MLP's log-prob of the chosen
    lever on the action token; observation tokens are not the policy's and get 0, outside every turn)."""
    cols: dict[str, list] = {k: [] for k in ("prompts", "responses", "response_mask", "uid", "episode_info",
                                             "episode_reward", "rm_scores", "old_log_probs")}
    for ep, r in zip(eps, turn_rewards):
        ids, _ = estimator_sequence(ep, vocab)
        plen = len(ep.prompt_ids)
        mask, pos = response_layout(ep)
        resp = ids[plen:]
        assert len(resp) == len(mask), (len(resp), len(mask))
        old = torch.zeros(len(resp))
        old[torch.tensor(pos)] = torch.tensor(ep.logps, dtype=torch.float32)
        cols["prompts"].append(torch.tensor(ep.prompt_ids))
        cols["responses"].append(torch.tensor(resp))
        cols["response_mask"].append(torch.tensor(mask))
        cols["uid"].append(ep.uid)
        cols["episode_info"].append({"won": ep.won})
        cols["episode_reward"].append(ep.reward)
        cols["rm_scores"].append(torch.tensor(place_turn_rewards(r, pos, len(resp)), dtype=torch.float32))
        cols["old_log_probs"].append(old)
    return cols


def _step_reward_hooks(algo, settings: dict):
    """``StepRewardHooks`` for the method's ``algorithm`` block (the trainer's plan: objective, online, beta,
    reference, replay window, ...), serving from an in-process ``StepRewardModel`` built from the plan's settings
    plus the benchmark's own (CPU, fp32, no checkpointing, its learning rate and model)."""
    from omegaconf import OmegaConf

    from spa_reward.steprm.service import StepRewardModel
    from spa_reward.steprm.trainer_hooks import StepRewardHooks

    hooks = StepRewardHooks(OmegaConf.create({"algorithm": OmegaConf.to_container(algo, resolve=True)}))
    if not hooks.trains:
        raise ValueError(f"algorithm block {algo.reward!r} plans no online step-reward service: {hooks.plan}")
    merged = {**hooks.plan["settings"], **settings}
    hooks.handle = StepRewardModel(merged)
    return hooks


def prepare_spa_online(seed: int, policy: Policy, task: LockTask, vocab: Vocab, args, workdir: Path, algo=None) -> dict:
    """spa's offline estimator (shared, cached per seed) as the start of an online progress service
    (``algorithm.spa.online``: replay window, steps per batch) that trains on every RL batch."""
    base = prepare_spa(seed, policy, task, vocab, args, workdir, algo=algo)
    algo = algo.copy()
    algo.spa.estimator_path = base["estimator_dir"]
    hooks = _step_reward_hooks(algo, {"device": "cpu", "dtype": "float32", "gradient_checkpointing": False,
                                      "lr": args.online_lr, "micro_batch_size": 64, "seed": seed})
    return {**base, "hooks": hooks}


def spa_online_rewards(eps: list[Episode], ctx: dict, algo) -> tuple[list[list[float]], dict]:
    """Online SPA: the reward manager ``spa`` scores c_t with the service's current (pre-update) weights, then the
    trainer hook trains the service on the batch (R per episode, replay window)."""
    hooks = ctx["hooks"]
    rewards, diag = _fused(eps, hooks.handle.score(scorer_items(eps, ctx["vocab"])), algo)
    metrics: dict = {}
    hooks.process(trainer_columns(eps, ctx["vocab"], rewards), metrics)
    return rewards, {**diag, "steprm_loss": metrics.get("steprm/loss", float("nan"))}


def prepare_istar(seed: int, policy: Policy, task: LockTask, vocab: Vocab, args, workdir: Path, algo=None) -> dict:
    """iStar's implicit PRM: a tiny causal LM built from a config over the lock vocabulary (the benchmark's
    policy is an MLP, so the PRM cannot start from it as in the paper; see ``istar_rewards``)."""
    from spa_reward.progress.model import build_tiny_backbone_config

    backbone = build_tiny_backbone_config(vocab_size=vocab.size, hidden_size=args.est_hidden, num_layers=2,
                                          num_heads=4, max_position_embeddings=256, pad_token_id=vocab.ids["<pad>"])
    hooks = _step_reward_hooks(algo, {"backbone_config": backbone, "model_path": None, "device": "cpu",
                                      "dtype": "float32", "gradient_checkpointing": False, "lr": args.prm_lr,
                                      "micro_batch_size": 64, "seed": seed})
    return {"hooks": hooks, "vocab": vocab}


def istar_rewards(eps: list[Episode], ctx: dict, algo) -> tuple[list[list[float]], dict]:
    """iStar, as the spa trainer mode runs it: the reward manager ``istar`` gives the env part per turn
    (``grounding_beta * g_t - invalid_penalty * (1 - g_t)``, R as the episode reward), then
    ``StepRewardHooks.process`` scores r_t = beta * q_t with the pre-update PRM, adds it on each turn's last token
    of ``rm_scores`` (``add_step_rewards``) and runs one trajectory-DPO update on the batch."""
    s = algo.istar
    env_part = [fuse_turn_rewards([0.0] * len(ep.actions), ep.executable, alpha=0.0, beta=s.grounding_beta,
                                  grounding="bonus", outcome=ep.reward, outcome_coef=algo.spa.outcome_coef, clip=None,
                                  invalid_penalty=algo.invalid_penalty)[0] for ep in eps]
    cols = trainer_columns(eps, ctx["vocab"], env_part)
    metrics: dict = {}
    new_scores = ctx["hooks"].process(cols, metrics)
    rewards, q = [], []
    for ep, env_r, row in zip(eps, env_part, new_scores):
        _, pos = response_layout(ep)
        r = row[torch.tensor(pos)].tolist()
        rewards.append(r)
        q.append([a - b for a, b in zip(r, env_r)])  # beta * q_t alone
    flat_q = [x for c in q for x in c]
    return rewards, {"c_worth_pearson": _pearson(flat_q, [w for ep in eps for w in ep.worth]),
                     "c_lag1_pearson": _lag1_pearson(q, eps), "steprm_loss": metrics.get("steprm/loss", float("nan"))}


# ---------------------------------------------------------------------------------------------- StepAgent


def iterations(args) -> int:
    """RL iterations (= verl training steps) of a run: the episode budget over the batch size."""
    return max(1, args.episodes // (args.tasks_per_batch * args.group_size))


def prepare_stepagent(seed: int, policy: Policy, task: LockTask, vocab: Vocab, args, workdir: Path,
                      algo=None) -> dict:
    """StepAgent's settings (``algorithm.stepagent`` of the method's block, read by the recipe's
    ``StepAgentSettings``; ``seed`` = the run seed so seeds draw different k; ``reverse_steps`` from
    ``--reverse-steps``, default half the run's iterations), the lock's expert demonstrations and, for modes
    ``implicit`` / ``irl``, the trainer's ``StepRewardHooks`` serving from an in-process ``StepRewardModel``: a tiny
    causal Llama (implicit: step-level DPO, frozen reference) or that backbone + a linear head (irl: the
    discriminator) over the lock vocabulary, as ``istar``'s PRM."""
    from omegaconf import OmegaConf

    from spa_reward.progress.model import build_tiny_backbone_config
    from spa_reward.stepagent.settings import StepAgentSettings

    settings = StepAgentSettings.from_config(OmegaConf.create({"algorithm": OmegaConf.to_container(algo)}))
    settings.seed = seed
    if settings.prefix == "reverse":
        settings.reverse_steps = int(args.reverse_steps or max(1, iterations(args) // 2))
    problems = [p for p in settings.problems() if "expert_path" not in p]  # the experts are built here, in process
    if problems:
        raise ValueError("stepagent: " + "; ".join(problems))
    ctx = {"settings": settings, "demos": lock_expert(task), "vocab": vocab,
           "info": {"prefix": settings.prefix, "reverse_steps": settings.reverse_steps if settings.prefix == "reverse"
                    else None}}
    if settings.mode in ("implicit", "irl"):
        backbone = build_tiny_backbone_config(vocab_size=vocab.size, hidden_size=args.est_hidden, num_layers=2,
                                              num_heads=4, max_position_embeddings=256, pad_token_id=vocab.ids["<pad>"])
        ctx["hooks"] = _step_reward_hooks(algo, {"backbone_config": backbone, "model_path": None, "device": "cpu",
                                                 "dtype": "float32", "gradient_checkpointing": False,
                                                 "lr": args.prm_lr, "micro_batch_size": 64, "seed": seed})
    return ctx


def stepagent_inspections(ctx: dict, task_ids: list[str], global_step: int) -> list:
    """One ``recipe.spa.expert_prefix.Inspection`` per training episode, as ``ExpertPrefix.start`` plans it:
    k = ``prefix_length(prefix, L, global_step, reverse_steps, seed, key=task_id)``, so a group (one task in one
    step) shares k."""
    from recipe.spa.expert_prefix import Inspection
    from spa_reward.stepagent.settings import prefix_length

    s = ctx["settings"]
    out = []
    for tid in task_ids:
        demo = ctx["demos"][tid]
        out.append(Inspection(demo, prefix_length(s.prefix, len(demo), global_step, s.reverse_steps, s.seed, key=tid)))
    return out


def stepagent_rewards(eps: list[Episode], ctx: dict, algo) -> tuple[list[list[float]], dict]:
    """StepAgent, as the recipe runs it: the ``stepagent`` reward manager's per-turn reward
    (``spa_reward.fusion.stepagent_turn_rewards``: +-match_reward on the compared turn in mode ``match``,
    grounding_beta * g_t, R on the last turn; whether the row matched read by ``StepAgentRewardManager.compared``
    from the episode's ``stepagent`` dict), then for ``implicit`` / ``irl`` ``StepRewardHooks.process`` on the
    trainer's columns plus the ``stepagent`` column: scores every policy turn with the pre-update PRM /
    discriminator (beta * q_t / clip(logit)), adds it on the turn's token and trains on the batch's unmatched
    compared turns (``stepagent_pairs``). The diagnostic c_t is the step-reward part (the match term, or the
    service's reward)."""
    from spa_reward.fusion import stepagent_turn_rewards
    from spa_reward.reward_manager import StepAgentRewardManager
    from spa_reward.stepagent.settings import STEPAGENT_KEY

    s = ctx["settings"]

    def manager(ep: Episode, matched):
        return stepagent_turn_rewards(len(ep.actions), ep.executable, ep.reward, matched, mode=s.mode,
                                      match_reward=float(s.match_reward), grounding_beta=float(s.grounding_beta),
                                      invalid_penalty=algo.invalid_penalty)[0]

    rewards = [manager(ep, StepAgentRewardManager.compared({STEPAGENT_KEY: ep.stepagent or {}})) for ep in eps]
    metrics: dict = {}
    if "hooks" in ctx:
        cols = trainer_columns(eps, ctx["vocab"], rewards)
        cols["stepagent"] = [ep.stepagent for ep in eps]
        new_scores = ctx["hooks"].process(cols, metrics)
        rewards = [row[torch.tensor(response_layout(ep)[1])].tolist() for ep, row in zip(eps, new_scores)]
    # the step-reward part: what the comparison adds over the env part (grounding, R) of a row without one
    step = [[a - b for a, b in zip(r, manager(ep, None))] for r, ep in zip(rewards, eps)]
    compared = [ep.stepagent for ep in eps if ep.stepagent and ep.stepagent["compared"]]
    flat = [x for c in step for x in c]
    return rewards, {
        "c_worth_pearson": _pearson(flat, [w for ep in eps for w in ep.worth]),
        "c_lag1_pearson": _lag1_pearson(step, eps),
        "match_rate": float(np.mean([d["match"] for d in compared])) if compared else float("nan"),
        "prefix_mean": float(np.mean([len(ep.prefix_actions) for ep in eps])),
        "steprm_loss": metrics.get("steprm/loss", float("nan")), "pairs": metrics.get("stepagent/pairs", 0.0),
    }


@dataclass(frozen=True)
class Method:
    """One row of the comparison: how turns are rewarded, which registered advantage estimator reads them, the
    algorithm overrides that are this method's own documented knobs, and an optional preparation step (e.g.
    training an estimator; called with the method's ``algo`` block) that returns the reward function's context
    and counts its extra episodes. ``expert_prefix`` (StepAgent): training episodes start from an expert prefix
    (:func:`stepagent_inspections`), and success is measured on an extra batch from the start state."""

    reward: Callable[[list[Episode], dict, Any], tuple[list[list[float]], dict]]
    adv_estimator: str
    algorithm: dict = field(default_factory=dict)
    prepare: Callable[..., dict] | None = None
    doc: str = ""
    expert_prefix: bool = False
    critic: bool = False  # a value MLP V(s_t) whose values reach the spa estimator: turn GAE (rl_ppo.sh, SPA_CRITIC=1)


# examples/rl_spa.sh's defaults, which are the recipe yaml's algorithm.spa block (the benchmark's ``spa`` runs them; a
# test checks the script): the prefix objective, grounding as a penalty of 0.1 on non-executed actions, no critic
SPA_CRITIC = False
# the paper's literal setting: MSE(sum_t c_t, R), a bonus of 0.5 per executed action, PPO with a critic
PAPER = {"objective": "sum", "alpha": 1.0, "beta": 0.5, "grounding": "bonus"}


def _spa(algorithm: dict | None = None, critic: bool = SPA_CRITIC, doc: str = "") -> Method:
    return Method(spa_rewards, "spa", {"spa": dict(algorithm or {})}, prepare=prepare_spa, critic=critic, doc=doc)


def _oracle(algorithm: dict | None = None, critic: bool = SPA_CRITIC, doc: str = "") -> Method:
    return Method(oracle_rewards, "spa", {"spa": dict(algorithm or {})}, critic=critic, doc=doc)


METHODS: dict[str, Method] = {
    "grpo": Method(outcome_rewards, "grpo", doc="outcome R, verl's GRPO"),
    "gigpo": Method(outcome_rewards, "gigpo", doc="outcome R, GiGPO anchor-state step groups"),
    "ppo": Method(outcome_rewards, "spa", critic=True,
                  doc="outcome R, turn GAE with a critic through the spa estimator (examples/rl_ppo.sh)"),
    "spa": _spa(doc="rl_spa.sh's defaults: prefix objective, r_t = c_t - 0.1 (1 - g_t), critic-free spa estimator"),
    "spa_sum": _spa({"objective": "sum"}, doc="spa with the paper's objective MSE(sum_t c_t, R), the rest as spa"),
    "spa_critic": _spa(critic=not SPA_CRITIC, doc="spa with a critic (turn GAE), as SPA_CRITIC=1"),
    "spa_paper": _spa(PAPER, critic=True, doc="the paper's setting: sum objective, r_t = c_t + 0.5 g_t, critic"),
    "spa_oracle": _oracle(doc="diagnostic: spa with c_t = the true worth of the step (a perfect estimator)"),
    "spa_online": Method(spa_online_rewards, "spa", {"reward": "spa", "spa": {"online": {"enable": True}}},
                         prepare=prepare_spa_online,
                         doc="spa whose estimator keeps training on every RL batch (online, same objective)"),
    "spa_online_sum": Method(spa_online_rewards, "spa",
                             {"reward": "spa", "spa": {"objective": "sum", "online": {"enable": True}}},
                             prepare=prepare_spa_online, doc="online spa with the sum objective"),
    # the grounding trap (README): the paper's per-step bonus against the penalty form, learned and perfect c_t
    "spa_bonus": _spa({"beta": 0.5, "grounding": "bonus"}, doc="spa with the paper's bonus 0.5 per executed action"),
    "spa_bonus_critic": _spa({"beta": 0.5, "grounding": "bonus"}, critic=True, doc="spa_bonus with a critic"),
    "spa_penalty_critic": _spa({"beta": 0.5}, critic=True, doc="penalty 0.5 on non-executed actions, critic"),
    "spa_nog": _spa({"beta": 0.0}, doc="spa without grounding (beta 0)"),
    "spa_oracle_bonus": _oracle({"beta": 0.5, "grounding": "bonus"}, doc="perfect c_t, bonus 0.5"),
    "spa_oracle_bonus_critic": _oracle({"beta": 0.5, "grounding": "bonus"}, critic=True,
                                       doc="perfect c_t, bonus 0.5, critic"),
    "spa_oracle_penalty_critic": _oracle({"beta": 0.5}, critic=True, doc="perfect c_t, penalty 0.5, critic"),
    "grpo_pen": Method(outcome_rewards, "grpo", {"invalid_penalty": 0.1}, doc="grpo with examples/'s penalty 0.1"),
    "istar": Method(istar_rewards, "spa", {"reward": "istar", "spa": {"mode": "rloo"}}, prepare=prepare_istar,
                    doc="implicit PRM r_t = beta q_t (pi_ref = rollout policy), trajectory DPO, spa rloo advantage"),
    "istar_frozen": Method(istar_rewards, "spa", {"reward": "istar", "spa": {"mode": "rloo"},
                                                   "istar": {"reference": "frozen"}}, prepare=prepare_istar,
                           doc="istar with pi_ref = a frozen copy of the initial PRM (q_t = 0 at the start)"),
    # StepAgent: examples/rl_stepagent.sh's defaults (ADV=spa, mean_norm; match_reward 1, grounding 0, uniform k)
    "stepagent": Method(stepagent_rewards, "spa", {"reward": "stepagent", "stepagent": {"mode": "match"}},
                        prepare=prepare_stepagent, expert_prefix=True,
                        doc="StepAgent match: expert prefix (uniform k), +-1 on the compared turn, R on the last"),
    "stepagent_reverse": Method(stepagent_rewards, "spa",
                                {"reward": "stepagent", "stepagent": {"mode": "match", "prefix": "reverse"}},
                                prepare=prepare_stepagent, expert_prefix=True,
                                doc="stepagent with the reverse curriculum (k from L-1 to 0 over --reverse-steps)"),
    "stepagent_irl": Method(stepagent_rewards, "spa", {"reward": "stepagent", "stepagent": {"mode": "irl"}},
                            prepare=prepare_stepagent, expert_prefix=True,
                            doc="StepAgent irl: discriminator D(s, a), r = clip(logit) on the compared turn"),
    "stepagent_implicit": Method(stepagent_rewards, "spa", {"reward": "stepagent", "stepagent": {"mode": "implicit"}},
                                 prepare=prepare_stepagent, expert_prefix=True,
                                 doc="StepAgent implicit: step-level DPO PRM, r = beta q on the compared turn"),
    "stepagent_irl_all": Method(stepagent_rewards, "spa",
                                {"reward": "stepagent", "stepagent": {"mode": "irl", "prm_turns": "all"}},
                                prepare=prepare_stepagent, expert_prefix=True,
                                doc="diagnostic: stepagent_irl with r_t = clip(logit) on every policy turn"),
    "stepagent_irl_8steps": Method(stepagent_rewards, "spa",
                                   {"reward": "stepagent",
                                    "stepagent": {"mode": "irl", "steps_per_batch": 8, "prm_turns": "all"}},
                                   prepare=prepare_stepagent, expert_prefix=True,
                                   doc="diagnostic: stepagent_irl_all with 8 discriminator steps per batch (recipe: 1)"),
}
DEFAULT_METHODS = ["grpo", "gigpo", "ppo", "spa", "spa_sum", "spa_critic", "spa_paper", "spa_oracle", "spa_online",
                   "spa_online_sum", "istar", "istar_frozen", "stepagent", "stepagent_reverse", "stepagent_irl", "stepagent_implicit"]
# the grounding study of the README (python benchmarks/bench_learning.py --methods $GROUNDING_METHODS ...)
GROUNDING_METHODS = ["spa", "spa_nog", "spa_bonus", "spa_critic", "spa_penalty_critic", "spa_bonus_critic", "spa_oracle",
                     "spa_oracle_bonus", "spa_oracle_penalty_critic", "spa_oracle_bonus_critic"]


def algorithm_config(overrides: dict):
    """The recipe's ``algorithm`` block (recipe/spa/config/spa_trainer.yaml) plus verl's lam / GRPO std defaults."""
    from omegaconf import OmegaConf

    algo = OmegaConf.load(RECIPE_YAML).algorithm
    base = OmegaConf.create({"lam": 1.0, "norm_adv_by_std_in_grpo": True})
    return OmegaConf.merge(base, algo, OmegaConf.create(overrides))


# -------------------------------------------------------------------------------------------------- training


def _pearson(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _lag1_pearson(contribs: list[list[float]], eps: list[Episode]) -> float:
    """Pearson of c_{t+1} with the worth of step t: credit that lands one turn late, where the effect is seen."""
    return _pearson([x for c in contribs for x in c[1:]], [w for ep in eps for w in ep.worth[:-1]])


def _mean_by_event(values: list[list[float]], eps: list[Episode]) -> dict[str, float]:
    out: dict[str, list[float]] = {}
    for vals, ep in zip(values, eps):
        for v, ev in zip(vals, ep.events):
            out.setdefault(ev, []).append(float(v))
    return {k: round(float(np.mean(v)), 4) for k, v in sorted(out.items())}


def ppo_update(policy: Policy, opt: torch.optim.Optimizer, eps: list[Episode], adv: torch.Tensor, args) -> float:
    """PPO-clip over all steps of the batch (token-mean), ``args.ppo_epochs`` passes, one minibatch."""
    feats = episode_features(eps)
    acts = torch.tensor([a for ep in eps for a in ep.actions])
    old = torch.tensor([lp for ep in eps for lp in ep.logps])
    a = torch.cat([adv[i, : len(ep.actions)] for i, ep in enumerate(eps)]).float()

    def loss_of() -> torch.Tensor:
        logp = torch.log_softmax(policy(feats), dim=-1).gather(1, acts[:, None]).squeeze(1)
        ratio = torch.exp(logp - old)
        return -torch.min(ratio * a, ratio.clamp(1 - args.clip, 1 + args.clip) * a).mean()

    return fit(policy, opt, loss_of, args.ppo_epochs)


def run_one(method_name: str, seed: int, task: LockTask, args, workdir: Path) -> dict:
    """Train one policy with one method and seed; returns its curves. With ``--init sft`` (default) the policy
    starts from the seed's imitation-trained policy (:func:`pretrain_policy`), the same for every method."""
    method = METHODS[method_name]
    algo = algorithm_config({"adv_estimator": method.adv_estimator, **method.algorithm})
    vocab = Vocab(task)
    torch.manual_seed(seed)
    policy = Policy(vocab.size, task.n_actions, hidden=args.hidden)
    prep: dict = {}
    if args.init == "sft":
        sft = pretrain_policy(seed, task, vocab, args)
        policy.load_state_dict(sft["state"])
        prep.update(sft["info"])
    opt = torch.optim.Adam(policy.parameters(), lr=args.lr)
    critic = critic_opt = None
    if method.critic:
        critic = Policy(vocab.size, 1, hidden=args.hidden)  # V starts at 0 (zero output layer)
        critic_opt = torch.optim.Adam(critic.parameters(), lr=args.critic_lr)
    ctx = {}
    if method.prepare is not None:
        ctx = method.prepare(seed, policy, task, vocab, args, workdir, algo=algo)
        prep.update(ctx.get("info", {}))
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    eval_gen = torch.Generator().manual_seed(20_000 + seed)  # StepAgent's evaluation batches: their own stream
    per_iter = args.tasks_per_batch * args.group_size
    iters = iterations(args)
    curve = {"episodes": [], "success": [], "adv_worth_pearson": [], "c_worth_pearson": [], "c_lag1_pearson": [],
             "loss": [], "train_success": [], "match_rate": [], "prefix_mean": []}
    t0 = time.time()
    for it in range(iters):
        locks = rng.sample(range(task.n_tasks), args.tasks_per_batch)
        tids = [f"lock-{k}" for k in locks for _ in range(args.group_size)]
        uids = [f"it{it}-lock{k}" for k in locks for _ in range(args.group_size)]
        if method.expert_prefix:  # verl's first training step is global_steps 1
            eps = rollout(policy, task, vocab, tids, uids, gen, stepagent_inspections(ctx, tids, it + 1))
            # success without the prefix: the same tasks from the start state, same size, temperature 1, not trained on
            won = [ep.won for ep in rollout(policy, task, vocab, tids, [u + "-eval" for u in uids], eval_gen)]
            prep["eval_episodes"] = prep.get("eval_episodes", 0) + len(won)
        else:
            eps = rollout(policy, task, vocab, tids, uids, gen)
            won = [ep.won for ep in eps]
        turn_rewards, diag = method.reward(eps, ctx, algo)
        values = critic_values(critic, eps) if critic is not None else None
        adv, returns = compute_advantages(eps, turn_rewards, method.adv_estimator, algo, values)
        if not torch.isfinite(adv).all():
            raise FloatingPointError(f"{method_name} seed {seed}: non-finite advantages at iteration {it}")
        loss = ppo_update(policy, opt, eps, adv, args)
        if critic is not None:
            critic_update(critic, critic_opt, eps, returns, args)
        flat_adv = [float(x) for i, ep in enumerate(eps) for x in adv[i, : len(ep.actions)]]
        curve["episodes"].append((it + 1) * per_iter)
        curve["success"].append(float(np.mean(won)))
        curve["train_success"].append(float(np.mean([ep.won for ep in eps])))
        curve["match_rate"].append(diag.get("match_rate", float("nan")))
        curve["prefix_mean"].append(diag.get("prefix_mean", 0.0))
        curve["adv_worth_pearson"].append(_pearson(flat_adv, [w for ep in eps for w in ep.worth]))
        curve["c_worth_pearson"].append(diag.get("c_worth_pearson", float("nan")))
        curve["c_lag1_pearson"].append(diag.get("c_lag1_pearson", float("nan")))
        curve["loss"].append(loss)
    return {"method": method_name, "seed": seed, "variant": task_tag(task), "rl_time_s": round(time.time() - t0, 1),
            "prepare": prep, **curve}


# ---------------------------------------------------------------------------------------------------- report


def smooth(x: list[float], window: int) -> np.ndarray:
    """Trailing moving average (the first points average what exists so far)."""
    x = np.asarray(x, dtype=np.float64)
    c = np.cumsum(np.insert(x, 0, 0.0))
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def episodes_to(episodes: list[int], success: np.ndarray, level: float) -> int | None:
    hit = np.nonzero(success >= level)[0]
    return int(episodes[hit[0]]) if len(hit) else None


FAMILIES = (  # the panels of the figures: (title, method name prefixes), first match wins
    ("outcome reward (references)", ("grpo", "gigpo", "ppo")),
    ("perfect c_t (diagnostics)", ("spa_oracle",)),
    ("online step-reward models", ("spa_online", "istar")),
    ("SPA, offline estimator", ("spa",)),
    ("StepAgent", ("stepagent",)),
)
PANELS = ("outcome reward (references)", "SPA, offline estimator", "perfect c_t (diagnostics)",
          "online step-reward models", "StepAgent")  # the order of the panels, left to right
REFERENCES = ("grpo", "gigpo")  # drawn thin in every panel, to compare against


def family(name: str) -> str:
    for title, prefixes in FAMILIES:
        if any(name == p or name.startswith(p + "_") for p in prefixes):
            return title
    return "other"


def _variants(runs: list[dict]) -> list[str]:
    seen = []
    for r in runs:
        v = r.get("variant", "lock")
        if v not in seen:
            seen.append(v)
    return seen


def summarize(runs: list[dict], window: int, methods: list[str]) -> list[dict]:
    """One row per (task variant, method) that ran: episodes to 50% / 80% success (mean curve over seeds, and how
    many seeds got there), final success, extra episodes, the per-step Pearson of A_t and c_t with the worth over
    training, and (offline spa) the trained estimator's per-step Pearson on held-out episodes of its explorer."""
    rows = []
    for variant in _variants(runs):
        for name in methods:
            mine = [r for r in runs if r["method"] == name and r.get("variant", "lock") == variant]
            if not mine:
                continue
            sm = np.array([smooth(r["success"], window) for r in mine])
            ep = mine[0]["episodes"]
            mean = sm.mean(0)
            reach = {}
            for level in (0.5, 0.8):
                seeds_hit = sum(episodes_to(ep, x, level) is not None for x in sm)
                at = episodes_to(ep, mean, level)
                reach[level] = f"{'never' if at is None else at} ({seeds_hit}/{len(sm)} seeds)"
            extra = int(np.mean([r["prepare"].get("explore_episodes", 0) for r in mine]))
            evals = int(np.mean([r["prepare"].get("eval_episodes", 0) for r in mine]))
            if evals:  # StepAgent: success is measured on these, played from the start state and never trained on
                extra = f"{extra + evals} (evaluation)" if not extra else f"{extra} + {evals} (evaluation)"
            final = [float(np.mean(r["success"][-window:])) for r in mine]
            adv_corr = [np.nanmean(r["adv_worth_pearson"]) for r in mine]
            c_corr = [np.nanmean(r["c_worth_pearson"]) for r in mine
                      if not all(math.isnan(x) for x in r["c_worth_pearson"])]
            held = [r["prepare"]["explore_step_pearson"] for r in mine if "explore_step_pearson" in r["prepare"]]
            rows.append({
                "task": variant,
                "method": name,
                "episodes to 50% (mean curve; seeds reaching)": reach[0.5],
                "episodes to 80%": reach[0.8],
                "final success (last %d iters)" % window: f"{np.mean(final):.2f} ± {np.std(final):.2f}",
                "extra episodes": extra,
                "corr(A, worth)": f"{np.nanmean(adv_corr):.2f}",
                "corr(c, worth)": f"{np.mean(c_corr):.2f}" if c_corr else "-",
                "estimator corr (held-out)": f"{np.mean(held):.2f} ± {np.std(held):.2f}" if held else "-",
            })
    return rows


def _grid(runs: list[dict], methods: list[str]):
    """(variants, families) that hold runs: the rows and columns of the small multiples."""
    variants = _variants(runs)
    ran = {r["method"] for r in runs}
    fams = [t for t in PANELS if any(family(m) == t for m in methods if m in ran)]
    if any(family(m) == "other" for m in methods if m in ran):
        fams.append("other")
    return variants, fams


def _panels(variants, fams, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(variants), len(fams), figsize=(4.3 * len(fams), 3.7 * len(variants)),
                             squeeze=False, sharex=True, sharey=True)
    fig.suptitle(title, fontsize=10)
    return plt, fig, axes


def plot(runs: list[dict], methods: list[str], window: int, path: Path, title: str) -> None:
    """Success rate vs RL episodes as small multiples: one row per task variant, one panel per method family
    (mean over seeds, band = min-max over seeds); grpo and gigpo are drawn thin in every panel as references."""
    variants, fams = _grid(runs, methods)
    plt, fig, axes = _panels(variants, fams, title + " - success rate (mean over seeds, band: min-max)")
    colors = {}
    for name in methods:  # a colour per method within its family: never reused inside a panel
        fam_members = [m for m in methods if family(m) == family(name)]
        colors[name] = f"C{fam_members.index(name) % 10}"
    for i, variant in enumerate(variants):
        for j, fam in enumerate(fams):
            ax = axes[i][j]
            for name in methods:
                mine = [r for r in runs if r["method"] == name and r.get("variant", "lock") == variant]
                if not mine:
                    continue
                ep = np.array(mine[0]["episodes"])
                sm = np.array([smooth(r["success"], window) for r in mine])
                if family(name) == fam:
                    ax.plot(ep, sm.mean(0), color=colors[name], lw=1.6, label=f"{name} ({len(mine)})")
                    ax.fill_between(ep, sm.min(0), sm.max(0), color=colors[name], alpha=0.15, lw=0)
                elif name in REFERENCES:
                    ax.plot(ep, sm.mean(0), color="0.45", lw=0.8, ls="--" if name == "grpo" else ":",
                            label=f"{name} (reference)")
            ax.axhline(0.5, color="grey", lw=0.4, ls=":")
            ax.axhline(0.8, color="grey", lw=0.4, ls=":")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"{variant}: {fam}", fontsize=9)
            if i == len(variants) - 1:
                ax.set_xlabel("RL episodes")
            if j == 0:
                ax.set_ylabel(f"success (moving avg {window})")
            ax.legend(loc="upper left", fontsize=6.5, framealpha=0.85)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_credit(runs: list[dict], methods: list[str], window: int, path: Path, title: str) -> None:
    """Per-step Pearson with the true worth over training, same grid as :func:`plot`: each method's advantage
    A_t (solid) and its step reward c_t (dashed; istar: beta q_t, StepAgent: the comparison's reward)."""
    variants, fams = _grid(runs, methods)
    plt, fig, axes = _panels(variants, fams, title + " - per-step Pearson with the true worth (solid: A_t, dashed: c_t)")
    for i, variant in enumerate(variants):
        for j, fam in enumerate(fams):
            ax = axes[i][j]
            members = [m for m in methods if family(m) == fam]
            for k, name in enumerate(members):
                mine = [r for r in runs if r["method"] == name and r.get("variant", "lock") == variant]
                if not mine:
                    continue
                ep = np.array(mine[0]["episodes"])
                corr = np.array([smooth(np.nan_to_num(r["adv_worth_pearson"]), window) for r in mine])
                ax.plot(ep, corr.mean(0), color=f"C{k % 10}", lw=1.4, label=name)
                cs = [r["c_worth_pearson"] for r in mine if not all(math.isnan(x) for x in r["c_worth_pearson"])]
                if cs and np.nanmean(cs) < 0.999:  # an oracle's c_t is the worth itself: nothing to show
                    c = np.array([smooth(np.nan_to_num(x), window) for x in cs])
                    ax.plot(ep, c.mean(0), color=f"C{k % 10}", lw=1.0, ls="--")
            ax.axhline(0, color="grey", lw=0.5)
            ax.set_ylim(-0.3, 1.05)
            ax.set_title(f"{variant}: {fam}", fontsize=9)
            if i == len(variants) - 1:
                ax.set_xlabel("RL episodes")
            if j == 0:
                ax.set_ylabel("Pearson with the true worth")
            ax.legend(loc="upper left", fontsize=6.5, framealpha=0.85)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="easy task, 2 seeds, small budget (about 2.5 minutes on 2 idle cores)")
    p.add_argument("--methods", nargs="+", default=None,
                   help=f"any of {list(METHODS)}, or grounding (= {GROUNDING_METHODS}); default {DEFAULT_METHODS} "
                   "(--from-json: every method of the files)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--episodes", type=int, default=2048, help="RL episodes per run (same for every method)")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--tasks-per-batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--ppo-epochs", type=int, default=2)
    p.add_argument("--clip", type=float, default=0.2)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="task variants: lock (opening ends the episode, R = 1) and fixed (fixed length, partial credit)")
    p.add_argument("--init", choices=["sft", "scratch"], default="sft",
                   help="sft: every method starts from the seed's imitation-trained policy (the paper's pipeline); "
                   "scratch: from the untrained, uniform policy")
    p.add_argument("--sft-episodes", type=int, default=1024, help="imitation stage: demonstrations of the noisy expert")
    p.add_argument("--sft-noise", type=float, default=0.9,
                   help="imitation stage: share of the expert's pulls that are uniformly random (0.9: ~20%% wins)")
    p.add_argument("--sft-steps", type=int, default=1000, help="imitation stage: Adam steps of behaviour cloning")
    p.add_argument("--critic-lr", type=float, default=3e-3, help="critic methods: the value MLP's learning rate")
    p.add_argument("--explore-episodes", type=int, default=1536, help="spa: episodes of the initial policy")
    p.add_argument("--est-epochs", type=int, default=12)
    p.add_argument("--est-lr", type=float, default=3e-3)
    p.add_argument("--est-batch", type=int, default=64)
    p.add_argument("--est-hidden", type=int, default=32)
    p.add_argument("--online-lr", type=float, default=1e-3, help="spa_online: the progress service's learning rate")
    p.add_argument("--prm-lr", type=float, default=1e-3,
                   help="istar, stepagent_implicit / _irl: the implicit PRM's / discriminator's learning rate")
    p.add_argument("--reverse-steps", type=int, default=None,
                   help="stepagent_reverse: steps over which k goes from L-1 to 0 (default: half the iterations)")
    p.add_argument("--n-tasks", type=int, default=LockTask.n_tasks)
    p.add_argument("--n-stages", type=int, default=LockTask.n_stages)
    p.add_argument("--n-actions", type=int, default=LockTask.n_actions)
    p.add_argument("--n-traps", type=int, default=LockTask.n_traps)
    p.add_argument("--n-invalid", type=int, default=LockTask.n_invalid)
    p.add_argument("--max-steps", type=int, default=LockTask.max_steps)
    p.add_argument("--smooth", type=int, default=5, help="moving-average window (batches) for curves and thresholds")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", default="outputs/bench_learning")
    p.add_argument("--workdir", default=None, help="where exploration records and estimators go (default: temp)")
    p.add_argument("--from-json", nargs="+", default=None,
                   help="redraw the PNGs and table from one or more learning.json (merged), no training")
    return p


QUICK = {"seeds": 2, "episodes": 768, "n_tasks": 4, "n_stages": 3, "explore_episodes": 384, "est_epochs": 3,
         "sft_episodes": 256, "sft_steps": 300}
VARIANTS = ("lock", "fixed")


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:  # quick values replace the defaults, not what was given explicitly
        for k, v in QUICK.items():
            if getattr(args, k) == parser.get_default(k):
                setattr(args, k, v)
    if args.from_json:
        only = None if args.methods is None else _expand(args.methods)
        return _redraw([Path(x) for x in args.from_json], Path(args.out_dir), only)
    args.methods = _expand(args.methods or DEFAULT_METHODS)
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; known: {list(METHODS)}")
    if args.tasks_per_batch > args.n_tasks:
        parser.error(f"--tasks-per-batch {args.tasks_per_batch} > --n-tasks {args.n_tasks}")
    torch.set_num_threads(max(1, args.threads))
    logging.getLogger("spa_reward").setLevel(logging.WARNING)
    import spa_reward.register  # noqa: F401  (registers gigpo / spa in verl's estimator registry)

    tasks = {v: LockTask(n_tasks=args.n_tasks, n_stages=args.n_stages, n_actions=args.n_actions,
                         n_traps=args.n_traps, n_invalid=args.n_invalid, max_steps=args.max_steps,
                         fixed_length=v == "fixed") for v in args.variants}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="spa_bench_learning_"))
    from tqdm.auto import tqdm

    t0, load_start = time.time(), _load()
    runs = []
    jobs = [(v, m, s) for v in args.variants for s in range(args.seeds) for m in args.methods]
    for v, m, s in tqdm(jobs, desc="bench_learning"):
        runs.append(run_one(m, s, tasks[v], args, work))
        r = runs[-1]
        sm = smooth(r["success"], args.smooth)
        tqdm.write(f"{v} {m} seed {s}: 50% at {episodes_to(r['episodes'], sm, 0.5)}, 80% at "
                   f"{episodes_to(r['episodes'], sm, 0.8)}, final success {np.mean(r['success'][-args.smooth:]):.2f}, "
                   f"RL {r['rl_time_s']} s {json.dumps(r['prepare']) if r['prepare'] else ''}")
    result = {"args": vars(args), "task": asdict(tasks[args.variants[0]]), "wall_s": round(time.time() - t0, 1),
              "load": f"{load_start} at the start, {_load()} at the end", "runs": runs}
    return _write(result, out)


def _expand(methods: list[str]) -> list[str]:
    """``grounding`` -> :data:`GROUNDING_METHODS`, duplicates dropped, order kept."""
    return list(dict.fromkeys(m for x in methods for m in (GROUNDING_METHODS if x == "grounding" else [x])))


def _load() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _write(result: dict, out: Path) -> dict:
    """Tables, pictures and JSON of a finished benchmark (``result`` holds args, task, wall_s and runs)."""
    args, task, runs = result["args"], result["task"], result["runs"]
    rows = summarize(runs, args["smooth"], args["methods"])
    title = (f"lock: {task['n_tasks']} tasks, {task['n_stages']} stages, {task['n_actions']} levers, "
             f"{task['max_steps']} steps, group {args['group_size']}, start: {args.get('init', 'scratch')}")
    plot(runs, args["methods"], args["smooth"], out / "learning.png", title)
    plot_credit(runs, args["methods"], args["smooth"], out / "learning_credit.png", title)
    table = markdown(rows)
    sft = sorted({(r.get("variant", "lock"), r["seed"], r["prepare"].get("sft_success")) for r in runs
                  if r["prepare"].get("sft_success") is not None})
    sft_line = ""
    if sft:
        by_variant = {v: [] for v in args.get("variants", []) if any(v == w for w, _, _ in sft)}
        for v, _, x in sft:
            by_variant.setdefault(v, []).append(x)
        sft_line = "imitation-trained start, success: " + ", ".join(
            f"{v} {np.mean(x):.2f} (seeds {min(x):.2f}-{max(x):.2f})" for v, x in by_variant.items()) + "\n\n"
    wall = result["wall_s"] if isinstance(result["wall_s"], str) else f"{result['wall_s']:.0f}"
    (out / "learning.md").write_text(f"{title}; {args['seeds']} seeds; wall {wall} s at load (1/5/15 min) "
                                     f"{result.get('load', '?')}\n\n{sft_line}" + table)
    result = {**result, "rows": rows}
    (out / "learning.json").write_text(json.dumps(result, indent=1, default=float))
    print("\n" + sft_line + table)
    print(f"wall {wall} s; wrote {out / 'learning.png'}, {out / 'learning_credit.png'}, "
          f"{out / 'learning.md'}, {out / 'learning.json'}")
    return result


def _redraw(paths: list[Path], out: Path, methods: list[str] | None = None) -> dict:
    """Tables and pictures again from one or more ``learning.json`` (runs of several invocations, e.g. one per task
    variant run side by side, are merged: their methods and variants in first-seen order, wall times listed; a run
    of a later file replaces the same (variant, method, seed) of an earlier one, e.g. methods run again);
    ``methods`` (an explicit ``--methods``): only those, in that order."""
    results = [json.loads(p.read_text()) for p in paths]
    merged = {k: results[0][k] for k in ("args", "task", "wall_s", "load") if k in results[0]}
    merged["args"] = dict(merged["args"])
    runs: dict = {}
    for res in results:
        for r in res["runs"]:
            if methods is None or r["method"] in methods:
                runs[(r.get("variant", "lock"), r["method"], r["seed"])] = r  # the latest file's run wins
    merged["runs"] = list(runs.values())
    for key in ("methods", "variants"):
        merged["args"][key] = list(dict.fromkeys(x for res in results for x in res["args"].get(key, [])))
    if methods is not None:
        merged["args"]["methods"] = [m for m in methods if any(r["method"] == m for r in merged["runs"])]
    walls = [res.get("wall_s", 0.0) for res in results]  # a merged file's is already "a + b" text
    merged["wall_s"] = walls[0] if len(walls) == 1 else " + ".join(  # run side by side: each one's wall time
        w if isinstance(w, str) else f"{w:.0f}" for w in walls)
    if len(results) > 1:
        merged["load"] = "; ".join(str(res.get("load", "?")) for res in results)
    out.mkdir(parents=True, exist_ok=True)
    return _write(merged, out)


if __name__ == "__main__":
    main()
