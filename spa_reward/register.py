"""Registers every spa-rl component with verl. Imported in every verl process; costs almost nothing.

verl loads this module through the ``verl.plugins`` entry point on ``import verl`` (driver, trainer, agent-loop and
reward workers alike). Fallback when entry points are disabled: ``VERL_USE_EXTERNAL_MODULES=spa_reward.register``
(multi-node: also pass it in the Ray runtime env,
``+ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES=spa_reward.register``).

Lazy registration. Nothing of verl's trainer, workers or registries is imported here. Each component is registered
the moment verl itself finishes importing the registry it lives in (a post-import hook on that module), so a
process that never looks up a trainer mode never pays for one:

* estimators ``spa``, ``gigpo``: when ``verl.trainer.ppo.core_algos`` is imported (runs ``spa_reward.advantage``);
* trainer mode ``spa``: when ``verl.trainer.ppo.v1`` is imported, the package of ``get_trainer_cls`` (imports
  ``spa_reward.trainer``); the recipe's env start-up check is registered at load in ``spa_reward.startup`` and its
  code loads only when a ``spa`` trainer starts;
* reward managers ``spa``, ``outcome``, ``istar``, ``stepagent``: when ``verl.experimental.reward_loop.reward_manager`` is imported (imports
  ``spa_reward.reward_manager``);
* agent loop ``env_agent``: when ``verl.experimental.agent_loop.agent_loop`` is imported (writes a ``_target_``
  string only);
* only with ``VERL_PLATFORM=cpu`` (the launch scripts' ``PLATFORM=cpu``): verl platform ``cpu`` at load, and the CPU
  patches of ``spa_reward.cpu_platform.MODULE_PATCHES`` when verl imports those modules. A GPU run imports none of it.

verl's lookups are plain dict reads (``trainer_base.get_trainer_cls`` reads ``TRAINER_REGISTRY``,
``core_algos.get_adv_estimator_fn`` ``ADV_ESTIMATOR_REGISTRY``, ``reward_manager.registry.get_reward_manager_cls``
``REWARD_MANAGER``, the agent-loop worker ``_agent_loop_registry``), and each dict lives in the module that defines
it, so every lookup necessarily happens after that module's import, i.e. after our hook ran. The agent-loop registry
stores hydra ``_target_`` strings, so ``env_agent`` is registered without importing the loop; the agent-loop worker
imports ``recipe.spa.agent_loop`` when it instantiates the first episode.

verl logs a plugin import error only at DEBUG (``verl/__init__.py``, the entry-point loop), so every failure here,
at load or in a hook, is printed to stderr with the component's name before it is re-raised. Check an install
with ``python -m spa_reward.register`` (imports every registry and lists what is missing).
"""

from __future__ import annotations

import importlib
import importlib.abc
import os
import sys
import traceback
from typing import Callable

REGISTERED = {
    "adv_estimator": ["spa", "gigpo"],
    "trainer_mode": ["spa"],
    "reward_manager": ["spa", "outcome", "istar", "stepagent"],
    "agent_loop": ["env_agent"],
}

AGENT_LOOP_TARGET = "recipe.spa.agent_loop.EnvAgentLoop"


def _report(what: str) -> None:
    print(f"spa-rl plug-in: {what} failed; spa-rl components will be missing:\n{traceback.format_exc()}",
          file=sys.stderr, flush=True)


def _register_estimators(_module) -> None:
    from spa_reward.advantage import register_estimators

    register_estimators()


def _env_startup_check(config) -> None:
    from recipe.spa.agent_loop import check_env_at_startup  # imported only when a spa trainer starts

    check_env_at_startup(config)


def _register_trainer(_module) -> None:
    importlib.import_module("spa_reward.trainer")  # @register_trainer("spa") runs at its import


def _register_reward_managers(_module) -> None:
    importlib.import_module("spa_reward.reward_manager")  # @register("spa"/"outcome") run at its import


def _register_agent_loop(module) -> None:
    module._agent_loop_registry.setdefault("env_agent", {"_target_": AGENT_LOOP_TARGET})


HOOKS: dict[str, Callable] = {
    "verl.trainer.ppo.core_algos": _register_estimators,
    "verl.trainer.ppo.v1": _register_trainer,
    "verl.experimental.reward_loop.reward_manager": _register_reward_managers,
    "verl.experimental.agent_loop.agent_loop": _register_agent_loop,
}
"""verl module -> registration run right after that module's body has executed."""


def _run_hook(name: str, module) -> None:
    try:
        HOOKS[name](module)
    except BaseException:
        _report(f"registering with {name}")
        raise


class _HookedLoader(importlib.abc.Loader):
    """Wraps a module's own loader: executes the module, then its registration hook."""

    def __init__(self, loader, name: str):
        self._loader, self._name = loader, name

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        module.__loader__ = self._loader  # the module keeps its real loader (resources, source lookup)
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        _run_hook(self._name, module)

    def __getattr__(self, attr):  # get_source, get_resource_reader, ... of the real loader
        return getattr(self._loader, attr)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds the hooked verl modules through the other finders and wraps their loader."""

    def find_spec(self, name, path, target=None):
        if name not in HOOKS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _HookedLoader(spec.loader, name)
                return spec
        return None


def install() -> None:
    """Install the hooks; a hooked module that is already imported is registered now. Idempotent (so are the
    hooks: verl's registries accept re-registering the same object)."""
    if not any(isinstance(f, _PostImportFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _PostImportFinder())
    for name in HOOKS:
        module = sys.modules.get(name)
        if module is not None and not getattr(module.__spec__, "_initializing", False):
            _run_hook(name, module)


def check() -> dict[str, list[str]]:
    """Import every verl registry we register with and return what is missing ({} when all is there). The
    command-line check: ``python -m spa_reward.register`` (exit status 1 and a list when something is missing)."""
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry
    from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY
    from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY

    registries = {"adv_estimator": ADV_ESTIMATOR_REGISTRY, "trainer_mode": TRAINER_REGISTRY,
                  "reward_manager": REWARD_MANAGER, "agent_loop": _agent_loop_registry}
    missing = {kind: [n for n in names if n not in registries[kind]] for kind, names in REGISTERED.items()}
    return {kind: names for kind, names in missing.items() if names}


if __name__ == "__main__":  # python -m spa_reward.register: load the real module (as verl does) and check it
    import spa_reward.register as _plugin

    _missing = _plugin.check()
    if _missing:
        print(f"spa-rl plug-in: not registered: {_missing}", file=sys.stderr)
        sys.exit(1)
    print("spa-rl plug-in: registered " + "; ".join(f"{k}: {', '.join(v)}" for k, v in REGISTERED.items()))
else:
    try:
        # config checks of the recipe's env block (spa_reward.config_check.register_config_check); light, no verl
        importlib.import_module("recipe.spa.settings")
        from spa_reward.startup import register_startup_check

        register_startup_check(_env_startup_check)
        if os.environ.get("VERL_PLATFORM", "").strip().lower() == "cpu":
            from spa_reward import cpu_platform

            cpu_platform.activate()
            HOOKS.update(cpu_platform.MODULE_PATCHES)
        install()
    except BaseException:
        _report("loading spa_reward.register")
        raise
