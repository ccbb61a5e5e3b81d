"""Settings of the ``env_agent`` agent loop: the top-level ``env`` block of the trainer config, and its checks.

``env_block_problems`` is registered with :func:`spa_reward.config_check.register_config_check`, so
``validate_config`` reports a bad ``env`` block with every other problem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from envs import env_names
from envs.actions import STYLES
from envs.prompts import HISTORY_LAYOUTS
from recipe.spa.env_pool import BACKENDS
from spa_reward.config_check import ConfigError, register_config_check, select_key, spa_objective

REWARD_MODES = ("final", "won")


# ----------------------------------------------------------------------------------------------- settings


@dataclass
class EnvRolloutSettings:
    """The ``env`` block of the trainer config (defaults in ``recipe/spa/config/spa_trainer.yaml``)."""

    name: str = "alfworld"
    max_steps: Optional[int] = None  # env step cap passed to the adapter (None: the adapter's default)
    max_turns: Optional[int] = None  # extra cap on assistant turns (None: the env's max_steps)
    prompt_style: str = "react"  # reply format the model is asked for (envs.actions.STYLES)
    parse_style: Optional[str] = None  # parser style (None: prompt_style; "auto" accepts any format)
    one_shot: bool = False
    system_prompt: bool = True
    include_admissible: Optional[bool] = None  # None: the env's default
    reward_scale: float = 1.0
    reward_mode: str = "final"  # final: the env's last step reward; won: 1.0 if won else 0.0
    max_tokens_per_turn: Optional[int] = None
    env_kwargs: dict = field(default_factory=dict)
    pool_backend: str = "process"
    pool_num_workers: Optional[int] = None
    step_timeout: float = 60.0
    reset_timeout: float = 300.0
    prepare_timeout: float = 3600.0  # the first open of the env in a pool (builds its disk caches), see env_pool
    collect_dir: Optional[str] = None
    collect_messages: bool = True
    allow_custom_env_classes: bool = False  # accept "module:Class" env names (imports and runs that code)
    history: str = "full"  # full: one packed row per episode; window: one row per step (recipe/spa/window.py)
    history_length: int = 2  # window layout: past (observation, action) pairs in each step's prompt

    @classmethod
    def from_config(cls, config: Any) -> EnvRolloutSettings:
        env = select_key(config, "env")
        if env is None:
            raise ValueError(
                "the env_agent agent loop needs the top-level 'env' config block; compose the trainer config from "
                "recipe/spa/config/spa_trainer.yaml (--config-path recipe/spa/config --config-name spa_trainer env=...)"
            )
        pool = select_key(env, "pool", {})
        kwargs = select_key(env, "env_kwargs", {})
        kwargs = dict(kwargs.items()) if hasattr(kwargs, "items") else {}
        return cls(
            name=str(select_key(env, "name", cls.name)),
            max_steps=select_key(env, "max_steps"),
            max_turns=select_key(env, "max_turns"),
            prompt_style=str(select_key(env, "prompt_style", cls.prompt_style)),
            parse_style=select_key(env, "parse_style"),
            one_shot=bool(select_key(env, "one_shot", False)),
            system_prompt=bool(select_key(env, "system_prompt", True)),
            include_admissible=select_key(env, "include_admissible"),
            reward_scale=float(select_key(env, "reward_scale", 1.0)),
            reward_mode=str(select_key(env, "reward_mode", "final")),
            max_tokens_per_turn=select_key(env, "max_tokens_per_turn"),
            env_kwargs=kwargs,
            pool_backend=str(select_key(pool, "backend", "process")),
            pool_num_workers=select_key(pool, "num_workers"),
            step_timeout=float(select_key(pool, "step_timeout", 60.0)),
            reset_timeout=float(select_key(pool, "reset_timeout", 300.0)),
            prepare_timeout=float(select_key(pool, "prepare_timeout", 3600.0)),
            collect_dir=select_key(env, "collect_dir"),
            collect_messages=bool(select_key(env, "collect_messages", True)),
            allow_custom_env_classes=select_key(env, "allow_custom_env_classes", False),
            history=str(select_key(env, "history", cls.history)),
            history_length=select_key(env, "history_length", cls.history_length),
        )

    def make_kwargs(self) -> dict:
        kwargs = {k: (dict(v) if hasattr(v, "items") else v) for k, v in self.env_kwargs.items() if v is not None}
        if self.max_steps is not None:
            kwargs["max_steps"] = int(self.max_steps)
        return kwargs


def default_pool_size(config: Any) -> int:
    """Enough env workers for every episode one agent-loop worker runs at once (train or val), at least 4."""
    workers = max(int(select_key(config, "actor_rollout_ref.rollout.agent.num_workers", 8)), 1)
    train = int(select_key(config, "data.train_batch_size", 16)) * int(select_key(config, "actor_rollout_ref.rollout.n", 1))
    val_bs = select_key(config, "data.val_batch_size")
    val = int(val_bs) * int(select_key(config, "actor_rollout_ref.rollout.val_kwargs.n", 1)) if val_bs else 0
    return max(4, math.ceil(max(train, val) / workers))


def env_settings_problems(settings: Any) -> list[str]:
    """Problems of an :class:`EnvRolloutSettings`."""
    out = []
    if not isinstance(settings.allow_custom_env_classes, bool):
        out.append(f"env.allow_custom_env_classes must be true or false, got {settings.allow_custom_env_classes!r}")
    if ":" in settings.name and settings.allow_custom_env_classes is not True:
        out.append(f"env.name={settings.name!r} is a module:Class name, which imports and runs that code; use a "
                   f"known environment ({', '.join(env_names())}) or set env.allow_custom_env_classes=true")
    elif ":" not in settings.name and settings.name not in env_names():
        out.append(f"env.name={settings.name!r} is not a known environment (known: {', '.join(env_names())})")
    if settings.prompt_style not in STYLES:
        out.append(f"env.prompt_style={settings.prompt_style!r} is not one of {STYLES}")
    if settings.parse_style is not None and settings.parse_style not in (*STYLES, "auto"):
        out.append(f"env.parse_style={settings.parse_style!r} is not one of {(*STYLES, 'auto')} (or null)")
    if settings.reward_mode not in REWARD_MODES:
        out.append(f"env.reward_mode={settings.reward_mode!r} is not one of {REWARD_MODES}")
    if not math.isfinite(settings.reward_scale):
        out.append(f"env.reward_scale must be finite, got {settings.reward_scale}")
    if settings.pool_backend not in BACKENDS:
        out.append(f"env.pool.backend={settings.pool_backend!r} is not one of {BACKENDS}")
    for key, value in (("env.max_steps", settings.max_steps), ("env.max_turns", settings.max_turns),
                       ("env.max_tokens_per_turn", settings.max_tokens_per_turn),
                       ("env.pool.num_workers", settings.pool_num_workers)):
        if value is not None and int(value) < 1:
            out.append(f"{key} must be >= 1 (or null), got {value}")
    if settings.history not in HISTORY_LAYOUTS:
        out.append(f"env.history={settings.history!r} is not one of {HISTORY_LAYOUTS} (full: one row per episode, "
                   "window: one row per step holding the last env.history_length steps)")
    if isinstance(settings.history_length, bool) or not isinstance(settings.history_length, int) \
            or settings.history_length < 0:
        out.append(f"env.history_length must be an integer >= 0, got {settings.history_length!r}")
    for key, value in (("env.pool.step_timeout", settings.step_timeout),
                       ("env.pool.reset_timeout", settings.reset_timeout),
                       ("env.pool.prepare_timeout", settings.prepare_timeout)):
        if not (value > 0 and math.isfinite(value)):
            out.append(f"{key}={value!r} must be a finite number of seconds > 0")
    return out


def validate_env_settings(settings: Any) -> None:
    problems = env_settings_problems(settings)
    if problems:
        raise ConfigError("invalid env config:\n  - " + "\n  - ".join(problems))


@register_config_check
def env_block_problems(cfg: Any) -> list[str]:
    """Problems of the ``env`` block of a composed trainer config."""
    if select_key(cfg, "env") is None:
        return ["no 'env' block: compose from recipe/spa/config/spa_trainer.yaml and pick env=<name>"]
    try:
        settings = EnvRolloutSettings.from_config(cfg)
    except (ValueError, TypeError) as exc:
        return [str(exc)]
    out = env_settings_problems(settings) + window_problems(settings, cfg)
    if settings.collect_dir and select_key(cfg, "algorithm.reward") == "stepagent":
        out.append("env.collect_dir is set with algorithm.reward=stepagent: expert-prefix episodes start from an "
                   "expert state, so their records are not the policy's own episodes (and their prompt pieces do not "
                   "hold the replayed prefix); collect with the reward the estimator is for, or unset env.collect_dir")
    return out


# advantage estimators that treat the rows of one window-layout session ({uid}_{session_id}_{index}) as one episode:
# grpo through verl's compute_advantage_for_multi_trajectories (the final row's advantage broadcast to every row;
# only with outcome rewards, see _window_grpo_problems)
WINDOW_ESTIMATORS = ("grpo", "gigpo", "spa")  # spa: critic-free (turn GAE needs values across rows)
# reward managers that score a window session row by row (spa_reward/layout.py) and whose step-reward models train
# on a session's rows as one episode (spa_reward/steprm: items keyed by {uid}_{session_id}): spa with an estimator
# trained with --layout window (frozen or online; the layout is checked at start-up), istar (Q = mean of beta * q_t
# over all the episode's rows), stepagent (pairs from the step-0 row)
WINDOW_REWARDS = ("outcome", "spa", "istar", "stepagent")


def window_problems(settings: Any, cfg: Any) -> list[str]:
    """Estimator settings that would silently train a different objective in the window layout."""
    if settings.history != "window":
        return []
    out = []
    estimator = select_key(cfg, "algorithm.adv_estimator")
    if estimator is not None and str(estimator) not in WINDOW_ESTIMATORS:
        out.append(f"env.history=window with algorithm.adv_estimator={estimator}: this estimator would treat every "
                   f"step row as its own episode; supported in the window layout: {', '.join(WINDOW_ESTIMATORS)} "
                   "(or use env.history=full)")
    if str(estimator) == "spa" and select_key(cfg, "critic.enable", False):
        out.append("env.history=window with algorithm.adv_estimator=spa and critic.enable=true: turn-level GAE needs "
                   "the critic's values across a session's rows, which the window layout does not carry; use the "
                   "critic-free spa estimator or env.history=full")
    reward = select_key(cfg, "algorithm.reward")
    if reward is not None and str(reward) not in WINDOW_REWARDS:
        out.append(f"env.history=window with algorithm.reward={reward}: this reward manager is not known to score a "
                   "window session row by row (spa_reward/layout.py) nor to train on a session's rows as one "
                   f"episode; use algorithm.reward in {WINDOW_REWARDS} or env.history=full")
    if str(estimator) == "grpo":
        out += _window_grpo_problems(cfg, reward)
    return out


# what puts a reward on a window session's non-final rows (verl's multi-trajectory GRPO never reads those rows)
GRPO_WINDOW_WORKS = ("env.history=window with adv_estimator=grpo works with algorithm.reward=outcome, "
                     "algorithm.invalid_penalty=0 and algorithm.use_kl_in_reward=false; for step rewards use "
                     "algorithm.adv_estimator=spa (critic-free) or gigpo, or env.history=full with grpo")


def _window_grpo_problems(cfg: Any, reward: Any) -> list[str]:
    """verl's ``compute_advantage_for_multi_trajectories`` (trainer/ppo/v1/utils.py) scores a session by the reward
    sum of its *final* row and broadcasts that advantage to every row: anything on an earlier row is dropped."""
    dropped = []
    if reward is not None and str(reward) != "outcome":
        what = {"spa": "c_t / g_t of every step", "istar": "beta q_t of every step",
                "stepagent": "the comparison reward of the step-0 row"}.get(str(reward), "its per-step rewards")
        dropped.append(f"algorithm.reward={reward} ({what})")
    penalty = select_key(cfg, "algorithm.invalid_penalty", 0.0)
    if penalty not in (None, 0, 0.0):
        dropped.append(f"algorithm.invalid_penalty={penalty} (the penalties of earlier steps)")
    if bool(select_key(cfg, "algorithm.use_kl_in_reward", False)):
        dropped.append("algorithm.use_kl_in_reward=true (the KL penalty of earlier steps)")
    if not dropped:
        return []
    return [f"env.history=window with grpo and {', '.join(dropped)}: verl's multi-trajectory GRPO scores a session "
            "by its final row only, so these never reach the advantage. " + GRPO_WINDOW_WORKS]


@register_config_check
def estimator_layout_problems(cfg: Any) -> list[str]:
    """A ``spa`` run whose progress estimator was trained in the other context layout (or window length) or with
    another objective (``algorithm.spa.objective``); checked only when the estimator folder exists (a missing one is
    reported by the reward's own checks)."""
    if select_key(cfg, "algorithm.reward") != "spa" or select_key(cfg, "env") is None:
        return []
    path = select_key(cfg, "reward.reward_kwargs.estimator_path") or select_key(cfg, "algorithm.spa.estimator_path")
    if not path:
        return []
    import os

    from spa_reward.progress.serve import check_estimator_layout, check_estimator_objective

    out = []
    for check in (lambda p: check_estimator_layout(p, str(select_key(cfg, "env.history", "full")),
                                                   select_key(cfg, "env.history_length")),
                  lambda p: check_estimator_objective(p, spa_objective(cfg))):
        try:
            check(os.path.expanduser(str(path)))
        except FileNotFoundError:  # no estimator there (yet): not this check's to report
            return []
        except ValueError as exc:
            out.append(str(exc))
    return out
