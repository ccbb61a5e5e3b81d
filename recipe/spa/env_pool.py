"""Environment workers that keep CPU-heavy env steps off the agent loop's event loop.

An :class:`EnvPool` owns up to ``num_workers`` workers. An episode leases one worker for its whole length
(``async with pool.session(env_name, env_kwargs) as env``), so at most ``num_workers`` episodes of one process
run at once and the others wait for a free worker (generation of the running ones goes on meanwhile).
Every call (``open``/``reset``/``step``/``invalid_step``) runs in a thread of the pool's own executor and has a
timeout, so the event loop never blocks on an environment.

Backends:

* ``process`` (default): each worker is a child process (``python -m recipe.spa.env_pool <fd>``) talking over a
  socket pair. A child keeps its env instances between episodes (one per env name and kwargs). A call that
  times out or a child that dies (segfault, OOM kill) raises :class:`EnvFailure`; the child is killed and a
  fresh one replaces it on the next lease, so only that episode is lost. A Python exception inside the env
  (e.g. an unknown task id at reset) also raises :class:`EnvFailure` but keeps the child.
* ``thread``: the env lives in this process and each worker has its own single thread. A hung call cannot be
  killed: on timeout the worker (thread and env) is abandoned and replaced. For debugging and light envs.

Faults that heal: a worker whose call did not end with a reply (timeout, crash, or the calling task cancelled
mid-call, e.g. an episode abandoned by the agent loop) is marked broken and never leased again, so no episode ever
reads another one's reply (each request also carries a sequence number that its reply must echo). The worker is
killed and the lease released in nested ``finally`` blocks, so a cancel during the kill still frees the slot. An
idle worker that died meanwhile (OOM killer, SIGKILL) is found on the next lease and replaced, and an ``open`` on a
reused worker that crashes is retried once on a fresh worker, so the next, unrelated episode does not pay for it.

First open: an env's constructor may build what it caches on disk (WebShop's search index and product store), which
can take longer than ``reset_timeout`` allows. So the first open of each env settings (name and kwargs) in a pool runs
alone, with ``prepare_timeout``; sessions that want the same settings meanwhile wait for it (no worker builds the same
cache at the same time) and, once it has succeeded, open with ``reset_timeout``: the build completes whatever the
open timeout. A worker that is killed (timeout, cancel, close) first gets SIGTERM and a moment to run its ``finally``
blocks, so a build it was in removes its temp files; SIGKILL follows only if it does not exit.

Env names: a session opens a registered env name (``envs.ENV_REGISTRY``). A ``package.module:Class`` name, which
imports that module and builds that class, is refused unless the pool was made with
``allow_custom_env_classes=True`` (config ``env.allow_custom_env_classes``; the dataset rows' ``extra_info.env_name``
reaches this point, and a dataset must not choose code to run).

This module imports no verl and no env engine (children import ``envs`` themselves).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import asynccontextmanager
from multiprocessing.connection import Connection
from typing import Any, AsyncIterator

logger = logging.getLogger(__name__)

BACKENDS = ("process", "thread")
_CUSTOM_NAME = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class EnvFailure(RuntimeError):
    """An env call failed: ``kind`` is ``timeout``, ``crash`` or ``error``; ``call`` is the command."""

    def __init__(self, kind: str, call: str, detail: str = ""):
        self.kind, self.call, self.detail = kind, call, detail
        super().__init__(f"env {kind} during {call}" + (f": {detail}" if detail else ""))

    @property
    def reason(self) -> str:
        """Short reason string for episode metrics, e.g. ``timeout:step``."""
        return f"{self.kind}:{self.call}"


# ---------------------------------------------------------------------------------------------- env host


class _EnvHost:
    """Runs commands against env instances; lives in a child process (process backend) or a thread."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}
        self.env = None

    @staticmethod
    def _key(name: str, kwargs: dict) -> str:
        try:
            return name + json.dumps(kwargs, sort_keys=True, default=repr)
        except TypeError:
            return name + repr(sorted(kwargs.items()))

    def handle(self, cmd: str, args: tuple) -> Any:
        if cmd == "open":
            name, kwargs, allow_custom = args
            key = self._key(name, kwargs)
            if key not in self._cache:
                self._cache[key] = _make(name, kwargs, allow_custom)
            self.env = self._cache[key]
            return {"max_steps": int(self.env.max_steps), "name": str(self.env.name)}
        if cmd == "ping":
            return "pong"
        if self.env is None:
            raise RuntimeError(f"{cmd!r} before 'open'")
        if cmd == "reset":
            task, seed, split = args
            return self.env.reset(task, seed=seed, split=split)
        if cmd == "step":
            return self.env.step(args[0])
        if cmd == "invalid_step":
            return self.env.invalid_step(args[0])
        if cmd == "expert_actions":
            return self.env.expert_actions()
        raise ValueError(f"unknown env command {cmd!r}")

    def close(self) -> None:
        for env in self._cache.values():
            try:
                env.close()
            except Exception:  # closing is best effort
                pass
        self._cache.clear()


def env_name_problem(name: str, allow_custom: bool) -> str | None:
    """Why a session may not open ``name`` (None when it may); see the module docstring."""
    if ":" not in name:
        return None  # a registry name: make_env names the known ones if it is not one of them
    if not allow_custom:
        return (f"env name {name!r} is a module:Class name, which would import and run that code; only registered "
                "env names are accepted (envs.ENV_REGISTRY) unless env.allow_custom_env_classes=true")
    if not _CUSTOM_NAME.fullmatch(name):
        return f"env name {name!r} is not of the form package.module:Class"
    return None


def _make(name: str, kwargs: dict, allow_custom: bool = False) -> Any:
    """``make_env(name)``; a ``"package.module:Class"`` name builds that class (only with ``allow_custom``)."""
    problem = env_name_problem(name, allow_custom)
    if problem:
        raise ValueError(problem)
    if ":" in name:
        import importlib
        import inspect

        from envs.base import TextEnv

        module, attr = name.split(":", 1)
        cls = getattr(importlib.import_module(module), attr)
        if not (inspect.isclass(cls) and issubclass(cls, TextEnv)):
            raise TypeError(f"env name {name!r} is not an envs.base.TextEnv subclass")
        return cls(**kwargs)
    from envs import make_env

    return make_env(name, **kwargs)


def _child_main(fd: int) -> None:
    """Child process loop: receive ``(cmd, args)``, reply ``("ok", result)`` or ``("error", text)``."""
    import signal

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    conn = Connection(fd)
    host = _EnvHost()
    try:
        while True:
            try:
                seq, cmd, args = conn.recv()
            except (EOFError, OSError):  # parent gone
                break
            if cmd == "close":
                break
            try:
                reply = (seq, "ok", host.handle(cmd, args))
            except Exception as exc:
                reply = (seq, "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}")
            try:
                conn.send(reply)
            except (BrokenPipeError, OSError):
                break
    finally:
        host.close()


# ---------------------------------------------------------------------------------------------- workers


TERM_GRACE_S = 2.0  # seconds a killed worker gets after SIGTERM to run its finally blocks (temp files) before SIGKILL


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds the current call: its finally blocks remove what it was writing


class _ProcessWorker:
    def __init__(self) -> None:
        parent, child = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO_ROOT, env.get("PYTHONPATH", "")) if p)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "recipe.spa.env_pool", str(child.fileno())],
                pass_fds=(child.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
            )
        finally:
            child.close()
        self.conn = Connection(parent.detach())
        self.broken = False
        self._seq = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return not self.broken and self.proc.poll() is None

    def call(self, cmd: str, args: tuple, timeout: float) -> Any:
        self._seq += 1
        seq = self._seq
        try:
            self.conn.send((seq, cmd, args))
            if not self.conn.poll(timeout):
                self.broken = True
                raise EnvFailure("timeout", cmd, f"no reply in {timeout:g}s")
            reply_seq, status, payload = self.conn.recv()
        except EnvFailure:
            raise
        except (EOFError, OSError, ValueError, TypeError) as exc:
            self.broken = True
            code = self.proc.poll()
            raise EnvFailure("crash", cmd, f"env worker died (exit code {code}): {exc!r}") from None
        if reply_seq != seq:  # a reply meant for an earlier call: this worker's stream cannot be trusted
            self.broken = True
            raise EnvFailure("crash", cmd, f"env worker answered request {reply_seq} to request {seq}")
        if status != "ok":
            raise EnvFailure("error", cmd, payload)
        return payload

    def kill(self) -> None:
        try:
            self.conn.send((0, "close", ()))
        except Exception:
            pass
        for stop, wait in ((None, 0.5 if not self.broken else 0.0), (self.proc.terminate, TERM_GRACE_S)):
            if self.proc.poll() is None:
                if stop is not None:  # SIGTERM: the child unwinds (finally blocks delete its temp files)
                    stop()
                try:
                    self.proc.wait(timeout=wait)
                except subprocess.TimeoutExpired:
                    pass
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                logger.warning("env worker pid %s did not exit after SIGKILL", self.proc.pid)
        try:  # after the child is gone: a thread still waiting on this connection then sees EOF, not a dead fd
            self.conn.close()
        except Exception:
            pass


class _ThreadWorker:
    def __init__(self) -> None:
        self.host = _EnvHost()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="env")
        self.broken = False

    def alive(self) -> bool:
        return not self.broken

    def call(self, cmd: str, args: tuple, timeout: float) -> Any:
        future = self.executor.submit(self.host.handle, cmd, args)
        try:
            return future.result(timeout=timeout)
        except FutureTimeout:
            self.broken = True
            raise EnvFailure("timeout", cmd, f"no reply in {timeout:g}s (thread abandoned)") from None
        except Exception as exc:
            raise EnvFailure("error", cmd, f"{type(exc).__name__}: {exc}") from exc

    def kill(self) -> None:
        self.executor.shutdown(wait=not self.broken, cancel_futures=True)
        if not self.broken:
            self.host.close()


# ---------------------------------------------------------------------------------------------- pool


class EnvSession:
    """One leased worker with one open env; the API mirrors :class:`envs.base.TextEnv` but every call is async."""

    def __init__(self, pool: EnvPool, worker: Any, max_steps: int, name: str):
        self._pool, self._worker, self.max_steps = pool, worker, max_steps
        self.name = name  # the env's own name (a custom module:Class env reports the env it builds on)

    async def _call(self, cmd: str, *args: Any, timeout: float | None = None) -> Any:
        return await self._pool._run(self._worker, cmd, args, timeout or self._pool.step_timeout)

    async def reset(self, task: str | int | None = None, seed: int | None = None, split: str = "train"):
        return tuple(await self._call("reset", task, seed, split, timeout=self._pool.reset_timeout))

    async def step(self, action: str):
        return tuple(await self._call("step", action))

    async def invalid_step(self, reason: str):
        return tuple(await self._call("invalid_step", reason))

    async def expert_actions(self) -> list[str] | None:
        return await self._call("expert_actions")


class EnvPool:
    """At most ``num_workers`` env workers; see the module docstring."""

    def __init__(
        self,
        num_workers: int = 8,
        backend: str = "process",
        step_timeout: float = 60.0,
        reset_timeout: float = 300.0,
        allow_custom_env_classes: bool = False,
        prepare_timeout: float = 3600.0,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"env pool backend must be one of {BACKENDS}, got {backend!r}")
        if num_workers < 1:
            raise ValueError(f"env pool num_workers must be >= 1, got {num_workers}")
        self.num_workers, self.backend = int(num_workers), backend
        self.step_timeout, self.reset_timeout = float(step_timeout), float(reset_timeout)
        self.prepare_timeout = float(prepare_timeout)
        self.allow_custom_env_classes = bool(allow_custom_env_classes)
        self._prepared: set[str] = set()  # env settings whose first open succeeded in this pool
        self._first_open_locks: dict[str, asyncio.Lock] = {}
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._leased = 0
        self._sem: asyncio.Semaphore | None = None
        self._sem_loop: asyncio.AbstractEventLoop | None = None
        # own threads: env calls never compete with verl's tokenisation for the default executor
        self._executor = ThreadPoolExecutor(max_workers=self.num_workers + 2, thread_name_prefix="envpool")
        self.replaced = 0  # workers killed after a timeout/crash/cancel, or found dead while idle

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._sem is None or self._sem_loop is not loop:  # a new event loop (e.g. one asyncio.run per test)
            self._sem = asyncio.Semaphore(self.num_workers)
            self._sem_loop = loop
            self._first_open_locks = {}
        return self._sem

    @asynccontextmanager
    async def _open_timeout(self, key: str) -> AsyncIterator[float]:
        """The timeout of an open of env settings ``key``: the first one in this pool runs alone with
        ``prepare_timeout`` (it may build the env's disk caches) and marks ``key`` done when its body succeeds;
        the others wait for it, then get ``reset_timeout`` (see the module docstring)."""
        if key not in self._prepared:
            async with self._first_open_locks.setdefault(key, asyncio.Lock()):
                if key not in self._prepared:
                    yield self.prepare_timeout
                    self._prepared.add(key)
                    return
        yield self.reset_timeout

    def _new_worker(self):
        return _ProcessWorker() if self.backend == "process" else _ThreadWorker()

    async def _run(self, worker: Any, cmd: str, args: tuple, timeout: float) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, worker.call, cmd, args, timeout)
        except EnvFailure:
            raise  # the worker marked itself broken if its reply stream is lost
        except BaseException:
            # cancelled (or interrupted) while the call is in flight: its reply may still come, so this worker
            # must never serve another call
            worker.broken = True
            raise

    def _take_idle(self) -> tuple[Any, list]:
        """An idle worker that is still alive (or None), and the dead ones found on the way."""
        dead = []
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.alive():
                    return worker, dead
                dead.append(worker)
        return None, dead

    async def _discard(self, worker: Any) -> None:
        self.replaced += 1
        await asyncio.get_running_loop().run_in_executor(self._executor, worker.kill)

    @asynccontextmanager
    async def session(self, env_name: str, env_kwargs: dict | None = None) -> AsyncIterator[EnvSession]:
        """Lease a worker, open ``env_name`` in it and yield an :class:`EnvSession`.

        Raises :class:`EnvFailure` when the env cannot be built (or its name is refused, see the module
        docstring); a worker that timed out, crashed or was cancelled mid-call is replaced when the session
        ends."""
        problem = env_name_problem(str(env_name), self.allow_custom_env_classes)
        if problem:
            raise EnvFailure("error", "open", problem)
        loop = asyncio.get_running_loop()
        sem = self._semaphore()
        await sem.acquire()
        worker = None
        try:
            with self._lock:
                self._leased += 1
            open_args = (env_name, dict(env_kwargs or {}), self.allow_custom_env_classes)
            async with self._open_timeout(_EnvHost._key(env_name, open_args[1])) as timeout:
                for attempt in (0, 1):
                    worker, dead = self._take_idle()
                    for gone in dead:  # died while idle (e.g. OOM-killed): replace it, not the episode
                        logger.warning("env worker found dead while idle; replacing it")
                        await self._discard(gone)
                    reused = worker is not None
                    if worker is None:
                        worker = await loop.run_in_executor(self._executor, self._new_worker)
                    try:
                        info = await self._run(worker, "open", open_args, timeout)
                        break
                    except EnvFailure as exc:
                        if not (reused and attempt == 0 and exc.kind == "crash"):
                            raise
                        logger.warning("reused env worker crashed on open (%s); retrying on a fresh one", exc)
                        stale, worker = worker, None
                        await self._discard(stale)
            yield EnvSession(self, worker, int(info["max_steps"]), str(info["name"]))
        finally:
            try:
                with self._lock:
                    self._leased -= 1
                    if worker is not None and not worker.broken:
                        self._idle.append(worker)
                        worker = None
                if worker is not None:
                    await self._discard(worker)
            finally:
                sem.release()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()
        self._executor.shutdown(wait=False, cancel_futures=True)


_POOLS: dict[tuple, EnvPool] = {}
_POOLS_LOCK = threading.Lock()


def get_env_pool(num_workers: int = 8, backend: str = "process", step_timeout: float = 60.0,
                 reset_timeout: float = 300.0, allow_custom_env_classes: bool = False,
                 prepare_timeout: float = 3600.0) -> EnvPool:
    """The process-wide pool for these settings (created on first use, closed at exit)."""
    key = (int(num_workers), backend, float(step_timeout), float(reset_timeout), bool(allow_custom_env_classes),
           float(prepare_timeout))
    with _POOLS_LOCK:
        if key not in _POOLS:
            _POOLS[key] = EnvPool(*key)
        return _POOLS[key]


@atexit.register
def _close_pools() -> None:
    for pool in list(_POOLS.values()):
        try:
            pool.close()
        except Exception:
            pass
    _POOLS.clear()


if __name__ == "__main__":
    _child_main(int(sys.argv[1]))
