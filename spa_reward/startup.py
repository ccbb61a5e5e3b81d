"""Start-up checks of the ``spa`` trainer mode: ``fn(config)`` callables that raise on a problem, run by
``SpaTrainer.init`` before verl builds any worker or touches a GPU.

The upper floor registers its checks here through the composition root (``spa_reward.register`` registers the
recipe's env check: one env built and reset with the run's settings). Imports nothing, so registering is free.
"""

from __future__ import annotations

from typing import Any, Callable

STARTUP_CHECKS: list[Callable[[Any], None]] = []


def register_startup_check(fn: Callable[[Any], None]) -> Callable[[Any], None]:
    """Add ``fn(config)`` to the start-up checks. Idempotent."""
    if fn not in STARTUP_CHECKS:
        STARTUP_CHECKS.append(fn)
    return fn


def run_startup_checks(config: Any) -> None:
    for check in STARTUP_CHECKS:
        check(config)
