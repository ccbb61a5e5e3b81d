"""One thread-count policy for the CPU tensor work of this project (advantage estimators, estimator training).

torch's default (one thread per core) collapses when other processes share the cores: OpenMP threads wait for
each other at every parallel region, and one of them is always descheduled. Measured with
``benchmarks/bench_estimators.py`` on 2 cores with one core busy, 2 threads were 2-6x slower than 1.

Policy (:func:`pick_num_threads`): the cores this process may run on (``os.sched_getaffinity``) that the 1-minute
load average leaves free, rounded to the nearest core, at least 1 and at most torch's current setting. ``SPA_NUM_THREADS=<n>`` overrides it. The load average lags by up to a minute: right after the load
changes the pick may be off for that long (the cost is the old figure, never a hang).

Use :func:`thread_policy` as a decorator (estimators) or call :func:`apply_thread_policy` once (training)::

    @thread_policy
    def compute_spa_advantage(...): ...
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Callable, Iterator
from typing import TypeVar

__all__ = ["ENV_VAR", "apply_thread_policy", "available_cores", "pick_num_threads", "thread_policy", "threads"]

ENV_VAR = "SPA_NUM_THREADS"
F = TypeVar("F", bound=Callable)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity; ``os.cpu_count()`` where affinity is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _load() -> float:
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


def _env_threads() -> int | None:
    text = os.environ.get(ENV_VAR, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{ENV_VAR}={text!r}: must be an integer >= 1 (unset it to use the automatic policy)")
    return value


def pick_num_threads(ceiling: int | None = None, cores: int | None = None, load: float | None = None) -> int:
    """Threads for the next CPU tensor op: ``$SPA_NUM_THREADS``, else the cores the load leaves free, rounded to
    the nearest whole core (``floor(cores - load + 0.5)``), clamped to ``[1, ceiling]`` (``ceiling``: torch's
    current thread count; ``cores``/``load`` default to this machine's). Rounding, not ``+ 1`` for our own core:
    the caller (a trainer waiting on GPUs, a fresh benchmark) is mostly not in the load average, so one busy
    process on 2 cores (load ~1) must give 1 thread."""
    forced = _env_threads()
    if forced is not None:
        return forced
    if ceiling is None:
        import torch

        ceiling = torch.get_num_threads()
    cores = available_cores() if cores is None else cores
    load = _load() if load is None else load
    free = math.floor(max(0.0, cores - load) + 0.5)
    return max(1, min(int(ceiling), cores, free))


@contextlib.contextmanager
def threads(n: int) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(n)`` and restore the previous count afterwards."""
    import torch

    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def thread_policy(fn: F) -> F:
    """Decorator: run ``fn`` with :func:`pick_num_threads` torch threads (restored afterwards)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with threads(pick_num_threads()):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def apply_thread_policy(requested: int = 0) -> int:
    """Set torch's thread count for the rest of the process: ``requested`` when > 0, else the policy. Returns it."""
    import torch

    n = requested if requested > 0 else pick_num_threads()
    torch.set_num_threads(n)
    return n
