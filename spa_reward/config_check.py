"""Start-up checks of a composed spa-rl trainer config: every problem found, in one error.

``validate_config(cfg)`` is called by the ``spa`` trainer mode before training starts; the agent loop checks its
``env`` block with :func:`validate_env_settings` and the ``spa`` reward manager checks its checkpoint itself.
It raises :class:`ConfigError` (a ``ValueError``) listing, one per line, each problem and the key to set:

* unknown environment / reply style / reward mode / env pool backend (``env.*``);
* unknown reward (``algorithm.reward``: outcome | spa), a ``reward.reward_manager.name`` that disagrees with it,
  an advantage estimator verl does not know (``algorithm.adv_estimator``);
* ``algorithm.reward=spa`` without a progress-estimator checkpoint (``algorithm.spa.estimator_path``);
* missing dataset parquet files (``data.train_files`` / ``data.val_files``);
* settings the dense per-turn rewards cannot work with: the legacy trainer (``trainer.use_v1=false``) or a
  colocated reward model (``reward.reward_model.enable=true``), which both rebuild ``rm_scores`` from one scalar.
"""

from __future__ import annotations

import math
import os
from typing import Any

REWARDS = ("outcome", "spa")
REMOTE_PREFIXES = ("hdfs://", "s3://", "gs://", "http://", "https://")


class ConfigError(ValueError):
    """One or more problems in a spa-rl config; the message lists them all."""


def select_key(cfg: Any, path: str, default: Any = None) -> Any:
    """``cfg.a.b`` for ``path='a.b'`` on a DictConfig/dict/object; ``default`` when missing, None or unresolvable."""
    node = cfg
    for key in path.split("."):
        if node is None:
            return default
        try:
            node = node.get(key, None) if hasattr(node, "get") else getattr(node, key, None)
        except Exception:  # an unresolvable interpolation reads as missing
            return default
    return default if node is None else node


def env_settings_problems(settings: Any) -> list[str]:
    """Problems of an ``EnvRolloutSettings`` (recipe.agent_loop)."""
    from envs import env_names
    from envs.actions import STYLES
    from recipe.agent_loop import REWARD_MODES
    from recipe.env_pool import BACKENDS

    out = []
    if settings.name not in env_names():
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
    for key, value in (("env.pool.step_timeout", settings.step_timeout),
                       ("env.pool.reset_timeout", settings.reset_timeout)):
        if not value > 0:
            out.append(f"{key} must be > 0, got {value}")
    return out


def validate_env_settings(settings: Any) -> None:
    problems = env_settings_problems(settings)
    if problems:
        raise ConfigError("invalid env config:\n  - " + "\n  - ".join(problems))


def _files(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def config_problems(cfg: Any, check_files: bool = True) -> list[str]:
    """Every problem of a composed trainer config (see the module docstring); [] when it is fine."""
    problems: list[str] = []

    # env block
    if select_key(cfg, "env") is None:
        problems.append("no 'env' block: compose from recipe/spa/config/spa_trainer.yaml and pick env=<name>")
    else:
        from recipe.agent_loop import EnvRolloutSettings

        try:
            problems += env_settings_problems(EnvRolloutSettings.from_config(cfg))
        except (ValueError, TypeError) as exc:
            problems.append(str(exc))

    # reward
    reward = select_key(cfg, "algorithm.reward")
    if reward not in REWARDS:
        problems.append(f"algorithm.reward={reward!r} is not one of {REWARDS}")
    source = select_key(cfg, "reward.reward_manager.source", "register")
    manager = select_key(cfg, "reward.reward_manager.name")
    if source == "register":
        import spa_reward.reward_manager  # noqa: F401  (registers outcome/spa)
        from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER

        if manager not in REWARD_MANAGER:
            problems.append(f"reward.reward_manager.name={manager!r} is not a registered reward manager "
                            f"(known: {', '.join(sorted(REWARD_MANAGER))})")
        elif reward in REWARDS and manager != reward:
            problems.append(f"reward.reward_manager.name={manager!r} disagrees with algorithm.reward={reward!r}; "
                            "leave reward.reward_manager.name at ${algorithm.reward}")
    if reward == "spa":
        from spa_reward.reward_manager import ESTIMATOR_HELP, RewardSettings

        path = RewardSettings.from_config(cfg).estimator_path
        if not path:
            problems.append(f"algorithm.reward=spa needs a progress estimator checkpoint: {ESTIMATOR_HELP}")
        elif check_files and not os.path.isdir(path):
            problems.append(f"algorithm.spa.estimator_path={path!r} does not exist: {ESTIMATOR_HELP}")

    # advantage estimator
    estimator = select_key(cfg, "algorithm.adv_estimator")
    import spa_reward.register  # noqa: F401  (registers spa/gigpo; verl's plugin hook normally did already)
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    try:
        get_adv_estimator_fn(estimator)
    except (ValueError, KeyError):
        problems.append(f"algorithm.adv_estimator={estimator!r} is not a registered advantage estimator")

    # data
    if check_files:
        for key in ("data.train_files", "data.val_files"):
            for path in _files(select_key(cfg, key)):
                if path.startswith(REMOTE_PREFIXES):
                    continue
                if not os.path.exists(os.path.expanduser(path)):
                    env = select_key(cfg, "env.name", "<env>")
                    problems.append(f"{key}: {path!r} does not exist; write it with "
                                    f"`python -m envs.prepare {env} --output-dir <dir>` and set DATA_DIR")

    # dense per-turn rewards need the v1 trainer and the streaming reward path
    if select_key(cfg, "trainer.use_v1", True) is False:
        problems.append("trainer.use_v1=false: the legacy trainer rebuilds rm_scores from one scalar per "
                        "trajectory, which loses the per-turn rewards; use the v1 trainer (trainer.use_v1=true)")
    if select_key(cfg, "reward.reward_model.enable", False):
        problems.append("reward.reward_model.enable=true: a colocated reward model overwrites the per-turn "
                        "rm_scores; the progress estimator runs as its own Ray actor, keep this false")
    return problems


def validate_config(cfg: Any, check_files: bool = True) -> None:
    """Raise :class:`ConfigError` listing every problem of ``cfg`` (nothing when it is fine)."""
    problems = config_problems(cfg, check_files=check_files)
    if problems:
        raise ConfigError("spa-rl config has " + (f"{len(problems)} problems" if len(problems) > 1 else "a problem")
                          + ":\n  - " + "\n  - ".join(problems))


__all__ = ["ConfigError", "config_problems", "env_settings_problems", "select_key", "validate_config",
           "validate_env_settings"]
