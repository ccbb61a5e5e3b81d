"""Registers every spa-rl component with verl. Imported in every verl process.

verl loads this module through the ``verl.plugins`` entry point on ``import verl`` (driver, trainer, agent-loop and
reward workers alike). verl swallows plugin import errors at DEBUG level, so this module raises on any failure and
``python -c "import spa_reward.register"`` is the check. Fallback when entry points are disabled:
``VERL_USE_EXTERNAL_MODULES=spa_reward.register`` (multi-node: also pass it in the Ray runtime env,
``+ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES=spa_reward.register``).

Registered:
- advantage estimators ``spa`` and ``gigpo`` (``verl.trainer.ppo.core_algos``)
- v1 trainer mode ``spa`` (``trainer.v1.trainer_mode=spa``)
- reward-loop managers ``spa``, ``outcome`` and ``istar`` (``reward.reward_manager.name``)
- agent loop ``env_agent`` (dataset column ``agent_name``)
"""

from __future__ import annotations

import importlib

from spa_reward.advantage import register_estimators

register_estimators()

# Modules whose import registers a component (decorators run at import).
for _module in ("spa_reward.trainer", "spa_reward.reward_manager", "recipe.spa.agent_loop"):
    importlib.import_module(_module)

REGISTERED = {
    "adv_estimator": ["spa", "gigpo"],
    "trainer_mode": ["spa"],
    "reward_manager": ["spa", "outcome", "istar"],
    "agent_loop": ["env_agent"],
}
