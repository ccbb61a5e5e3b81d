"""Env workers: calls run off the event loop with a timeout; a hung or crashed worker ends only its episode
and is replaced."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from recipe.spa.env_pool import EnvFailure, EnvPool

TOY = "tests.recipe.helpers:ToyEnv"


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("backend", ["process", "thread"])
def test_episode_and_reuse(backend):
    pool = EnvPool(num_workers=2, backend=backend, step_timeout=20, reset_timeout=60, allow_custom_env_classes=True)

    async def episode(task):
        async with pool.session(TOY, {"max_steps": 5}) as env:
            assert env.max_steps == 5
            obs, info = await env.reset(task)
            steps = []
            for action in await env.expert_actions():
                steps.append(await env.step(action))
            return obs, info, steps

    try:
        obs, info, steps = run(episode("t1"))
        assert obs == "You are at 0." and info["task_type"] == "odd" and info["anchor"] == "pos0"
        assert [s[2] for s in steps] == [False, True] and steps[-1][3]["won"]
        # four episodes on two workers: they queue, run concurrently two at a time, and reuse the workers
        async def many():
            return await asyncio.gather(*(episode(f"t{i}") for i in range(4)))

        results = run(many())
        assert all(r[2][-1][3]["won"] for r in results)
        assert len(pool._idle) <= 2 and pool.replaced == 0
    finally:
        pool.close()


def test_process_hang_and_crash_are_replaced():
    pool = EnvPool(num_workers=1, backend="process", step_timeout=1.0, reset_timeout=60,
                   allow_custom_env_classes=True)

    async def play(kwargs, action):
        async with pool.session(TOY, kwargs) as env:
            await env.reset("t3")
            return await env.step(action)

    try:
        with pytest.raises(EnvFailure) as hang:
            run(play({"hang_on": "wait", "hang_seconds": 600}, "wait"))
        assert hang.value.reason == "timeout:step"
        assert pool.replaced == 1 and not pool._idle  # the hung child was killed, not kept
        with pytest.raises(EnvFailure) as crash:
            run(play({"crash_on": "wait"}, "wait"))
        assert crash.value.reason == "crash:step" and pool.replaced == 2
        # an exception inside the env is an error of that call; the worker survives
        with pytest.raises(EnvFailure) as err:
            run(play({"no_such_kwarg": 1}, "wait"))
        assert err.value.reason == "error:open" and pool.replaced == 2 and len(pool._idle) == 1
        # and the pool keeps working
        obs, reward, done, info = run(play({}, "step forward"))
        assert info["executable"] and not done
    finally:
        pool.close()


def test_event_loop_not_blocked_by_env_step(tmp_path):
    """While an env step runs, other coroutines keep running: here the step can only finish after another
    coroutine has written a file, which would deadlock (and time out) if the step blocked the event loop."""
    pool = EnvPool(num_workers=1, backend="process", step_timeout=60, reset_timeout=60,
                   allow_custom_env_classes=True)
    flag = tmp_path / "go"

    async def main():
        async def release():
            await asyncio.sleep(0)
            flag.write_text("go")

        async with pool.session(TOY, {"wait_for_file": str(flag)}) as env:
            await env.reset("t0")
            step = asyncio.create_task(env.step("wait"))
            await release()
            return await step

    try:
        obs, reward, done, info = run(main())
        assert info["executable"] and not done
    finally:
        pool.close()


# ---------------------------------------------------------------------------------------------- faults that heal


def test_module_class_names_need_the_flag(tmp_path):
    """A dataset row's env_name must not pick code to import: module:Class only behind the explicit flag."""
    marker = tmp_path / "imported"
    pool = EnvPool(num_workers=1, backend="thread", step_timeout=5, reset_timeout=5)

    async def open_(name):
        async with pool.session(name, {}) as env:
            return env.max_steps

    try:
        for name in (TOY, "os:system", "tests.recipe.helpers:byte_tokenizer"):
            with pytest.raises(EnvFailure, match="allow_custom_env_classes") as exc:
                run(open_(name))
            assert exc.value.reason == "error:open"
        assert not pool._idle and pool.replaced == 0  # refused before any worker was leased
        with pytest.raises(EnvFailure, match="Unknown environment 'nethack'"):
            run(open_("nethack"))
        allowed = EnvPool(num_workers=1, backend="thread", step_timeout=5, reset_timeout=5,
                          allow_custom_env_classes=True)
        try:
            assert run(_open_in(allowed, TOY)) == 10
            with pytest.raises(EnvFailure, match="not an envs.base.TextEnv subclass"):
                run(_open_in(allowed, "tests.recipe.helpers:byte_tokenizer"))
        finally:
            allowed.close()
        assert not marker.exists()
    finally:
        pool.close()


async def _open_in(pool, name):
    async with pool.session(name, {}) as env:
        return env.max_steps


@pytest.mark.parametrize("backend", ["process", "thread"])
def test_cancelled_session_then_clean_episode_gets_its_own_replies(backend, tmp_path):
    """An episode cancelled while its step is still running must not hand that step's late reply to the next
    episode on the same worker (before the fix the next reset received the old step's reply)."""
    pool = EnvPool(num_workers=1, backend=backend, step_timeout=30, reset_timeout=30, allow_custom_env_classes=True)
    kwargs = {"hang_on": "wait", "hang_seconds": 1.0}

    async def cancelled():
        async with pool.session(TOY, kwargs) as env:
            await env.reset("t2")
            task = asyncio.ensure_future(env.step("wait"))
            await asyncio.sleep(0.3)  # the step is in flight in the worker
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    async def clean():
        async with pool.session(TOY, kwargs) as env:
            obs, info = await env.reset("t1")
            step = await env.step("step forward")
            return obs, info, step

    try:
        run(cancelled())
        assert pool.replaced == 1 and not pool._idle  # the worker with the call in flight was not reused
        obs, info, (obs2, reward, done, info2) = run(clean())
        assert obs == "You are at 0." and info["task_id"] == "t1" and info["step"] == 0
        assert obs2 == "You are at 1." and info2["step"] == 1 and not done
        time.sleep(1.0)  # the abandoned step's reply would have arrived by now: the worker stays clean
        assert run(clean())[1]["task_id"] == "t1"
    finally:
        pool.close()


def test_cancel_during_kill_still_releases_the_slot():
    """The slot is released in a nested finally: a second cancel while the broken worker is being killed must not
    leak it (with one worker, a leaked slot would hang the next session forever)."""
    pool = EnvPool(num_workers=1, backend="process", step_timeout=30, reset_timeout=30, allow_custom_env_classes=True)

    async def main():
        async def episode():
            async with pool.session(TOY, {"hang_on": "wait", "hang_seconds": 5.0}) as env:
                await env.reset("t0")
                await env.step("wait")

        task = asyncio.ensure_future(episode())
        await asyncio.sleep(0.5)
        task.cancel()  # cancels the step ...
        await asyncio.sleep(0)
        task.cancel()  # ... and then the kill in the session's finally
        with pytest.raises(asyncio.CancelledError):
            await task
        return await asyncio.wait_for(_open_in(pool, TOY), timeout=30)

    try:
        assert run(main()) == 10
    finally:
        pool.close()


def test_idle_worker_killed_is_replaced_on_open():
    """A worker that died while idle (SIGKILL, as the OOM killer does) costs the next episode nothing."""
    pool = EnvPool(num_workers=1, backend="process", step_timeout=30, reset_timeout=30, allow_custom_env_classes=True)

    async def episode(task):
        async with pool.session(TOY, {}) as env:
            await env.reset(task)
            return [await env.step(a) for a in await env.expert_actions()]

    try:
        assert run(episode("t0"))[-1][3]["won"]
        (worker,) = pool._idle
        os.kill(worker.pid, signal.SIGKILL)
        worker.proc.wait(timeout=10)
        steps = run(episode("t2"))
        assert steps[-1][3]["won"] and len(steps) == 3
        assert pool.replaced == 1 and len(pool._idle) == 1 and pool._idle[0] is not worker
    finally:
        pool.close()


def _cache_sessions(pool, kwargs, n, concurrent=False):
    """Open ``n`` sessions of the toy env with ``kwargs`` (one reset each); each result is "ok" or the failure."""
    async def one():
        try:
            async with pool.session(TOY, kwargs) as env:
                await env.reset("t0")
                return "ok"
        except EnvFailure as exc:
            return exc.reason

    async def main():
        if concurrent:
            return list(await asyncio.gather(*(one() for _ in range(n))))
        return [await one() for _ in range(n)]

    return run(main())


@pytest.mark.parametrize("backend", ["process", "thread"])
def test_a_cache_build_longer_than_the_open_timeout_completes_once(backend, tmp_path):
    """An env whose constructor builds a disk cache for longer than reset_timeout (as WebShop's index): the first
    open runs alone with prepare_timeout and builds it once, the concurrent ones wait for it; no temp file is left.
    (Before, every open timed out, each killed build started again and the cache never completed.)"""
    cache = tmp_path / "index.bin"
    pool = EnvPool(num_workers=3, backend=backend, step_timeout=5, reset_timeout=1.0, prepare_timeout=120,
                   allow_custom_env_classes=True)
    kwargs = {"cache_file": str(cache), "build_seconds": 3.0}
    try:
        results = _cache_sessions(pool, kwargs, 3, concurrent=True)  # the others may time out starting a worker
        assert results[0] == "ok" and cache.is_file() and (tmp_path / "index.bin.builds").read_text() == "x"
        assert _cache_sessions(pool, kwargs, 2) == ["ok", "ok"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["index.bin", "index.bin.builds"]
    finally:
        pool.close()


@pytest.mark.slow
def test_webshop_index_builds_under_a_short_open_timeout(webshop_data, tmp_path):
    """The real 1000-product set with a fresh cache and a 1 s open timeout (building its index takes seconds): the
    first open builds the index once, later episodes reuse the worker, and the cache holds no temp file."""
    pool = EnvPool(num_workers=1, backend="process", step_timeout=30, reset_timeout=1.0, prepare_timeout=600)
    kwargs = {"data_dir": str(webshop_data), "cache_dir": str(tmp_path), "spacy_model": None}

    async def episode():
        async with pool.session("webshop", kwargs) as env:
            obs, info = await env.reset("0", split="test")
            return (await env.step("search[shoes]"))[3]["executable"]

    try:
        assert run(episode()) and run(episode())
        assert [p.suffix for p in tmp_path.iterdir()] == [".npz"] and pool.replaced == 0
    finally:
        pool.close()
    assert [p.suffix for p in tmp_path.iterdir()] == [".npz"]


def test_a_killed_build_leaves_no_temp_file(tmp_path):
    """A worker killed mid-build (its first open ran past prepare_timeout) gets SIGTERM first: the build's finally
    removes its temp file; after close nothing is left but what was finished. A later first open builds again."""
    cache = tmp_path / "index.bin"
    pool = EnvPool(num_workers=1, backend="process", step_timeout=5, reset_timeout=1.0, prepare_timeout=8.0,
                   allow_custom_env_classes=True)  # 8 s: time for a worker to start on a loaded machine
    try:
        assert _cache_sessions(pool, {"cache_file": str(cache), "build_seconds": 600}, 1) == ["timeout:open"]
        assert pool.replaced == 1 and not pool._idle
        assert sorted(p.name for p in tmp_path.iterdir()) == ["index.bin.builds"]  # the temp file went with it
        assert _cache_sessions(pool, {"cache_file": str(cache), "build_seconds": 0.1}, 1) == ["ok"]
    finally:
        pool.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.bin", "index.bin.builds"]


def test_env_settings_check_the_custom_class_flag():
    from recipe.spa.settings import EnvRolloutSettings, env_settings_problems

    assert env_settings_problems(EnvRolloutSettings(name="webshop")) == []
    (problem,) = env_settings_problems(EnvRolloutSettings(name="tests.recipe.helpers:ToyEnv"))
    assert "env.allow_custom_env_classes=true" in problem and "module:Class" in problem
    assert env_settings_problems(EnvRolloutSettings(name="tests.recipe.helpers:ToyEnv",
                                                    allow_custom_env_classes=True)) == []
    assert any("must be true or false" in p for p in
               env_settings_problems(EnvRolloutSettings(allow_custom_env_classes="yes")))
    (problem,) = env_settings_problems(EnvRolloutSettings(prepare_timeout=float("nan")))
    assert problem.startswith("env.pool.prepare_timeout=nan must be")
