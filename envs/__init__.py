"""Text environments behind one interface (``envs.base.TextEnv``) and a registry to build them by name.

Importing this package imports no environment engine: each adapter module is imported only when
``make_env`` asks for it, so ``spa_reward`` and the trainer stay light.
"""

from __future__ import annotations

import importlib

from envs.base import NOTHING_HAPPENS, TextEnv

# name -> "module:Class". The module is imported lazily by make_env.
ENV_REGISTRY: dict[str, str] = {
    "alfworld": "envs.alfworld:AlfWorldEnv",
    "webshop": "envs.webshop:WebShopEnv",
    "virtualhome": "envs.virtualhome:VirtualHomeEnv",
}

# pip extra that installs each environment's engine
ENV_EXTRAS = {"alfworld": "alfworld", "webshop": "webshop", "virtualhome": "virtualhome"}


def env_names() -> list[str]:
    return sorted(ENV_REGISTRY)


def check_env_name(name: str) -> str:
    """Return ``name`` if it is a known environment, else raise a ValueError that lists the known ones."""
    if name not in ENV_REGISTRY:
        raise ValueError(f"Unknown environment {name!r}. Known environments: {', '.join(env_names())}.")
    return name


def get_env_cls(name: str) -> type[TextEnv]:
    module_name, cls_name = ENV_REGISTRY[check_env_name(name)].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"Environment {name!r} needs its engine: pip install -e '.[{ENV_EXTRAS[name]}]' ({exc})"
        ) from exc
    return getattr(module, cls_name)


def make_env(name: str, **kwargs) -> TextEnv:
    """Build an environment by registry name; kwargs go to the adapter's constructor."""
    return get_env_cls(name)(**kwargs)


__all__ = ["ENV_REGISTRY", "NOTHING_HAPPENS", "TextEnv", "check_env_name", "env_names", "get_env_cls", "make_env"]
