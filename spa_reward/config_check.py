"""Start-up checks of a composed spa-rl trainer config: every problem found, in one error.

``validate_config(cfg)`` is called by the ``spa`` trainer mode before training starts; the recipe's ``env`` block check
(``recipe.spa.settings``) is added with :func:`register_config_check` and the ``spa`` reward manager checks its checkpoint itself.
It raises :class:`ConfigError` (a ``ValueError``) listing, one per line, each problem and the key to set:

* unknown environment / reply style / reward mode / env pool backend (``env.*``);
* unknown reward (``algorithm.reward``: outcome | spa | istar), a ``reward.reward_manager.name`` that disagrees with it,
  an advantage estimator verl does not know (``algorithm.adv_estimator``);
* step-reward service settings that cannot build (``algorithm.istar.*``, ``algorithm.spa.online.*``);
* ``algorithm.reward=spa`` without a progress-estimator checkpoint (``algorithm.spa.estimator_path``);
* missing dataset parquet files (``data.train_files`` / ``data.val_files``);
* settings the dense per-turn rewards cannot work with: the legacy trainer (``trainer.use_v1=false``) or a
  colocated reward model (``reward.reward_model.enable=true``), which both rebuild ``rm_scores`` from one scalar.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

REWARDS = ("outcome", "spa", "istar")
REMOTE_PREFIXES = ("hdfs://", "s3://", "gs://", "http://", "https://")


class ConfigError(ValueError):
    """One or more problems in a spa-rl config; the message lists them all."""


_CHECKS: list[Callable[[Any], list[str]]] = []


def register_config_check(fn: Callable[[Any], list[str]]) -> Callable[[Any], list[str]]:
    """Add ``fn(cfg) -> [problem, ...]`` to :func:`config_problems` (the recipe registers its ``env`` block check
    this way, so this module never imports the recipe). Idempotent."""
    if fn not in _CHECKS:
        _CHECKS.append(fn)
    return fn


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


def _files(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def config_problems(cfg: Any, check_files: bool = True) -> list[str]:
    """Every problem of a composed trainer config (see the module docstring); [] when it is fine."""
    problems: list[str] = []

    # checks registered by the layers above (the recipe's env block); the composition root imports them
    import spa_reward.register  # noqa: F401

    for check in _CHECKS:
        problems += check(cfg)

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

    # step-reward service (istar / online spa): its settings must build
    if reward in ("istar", "spa"):
        from spa_reward.steprm.trainer_hooks import plan_problems

        problems += plan_problems(cfg)

    # advantage estimator
    estimator = select_key(cfg, "algorithm.adv_estimator")
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


__all__ = ["ConfigError", "config_problems", "register_config_check", "select_key", "validate_config"]
