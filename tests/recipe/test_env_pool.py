"""Env workers: calls run off the event loop with a timeout; a hung or crashed worker ends only its episode
and is replaced."""

from __future__ import annotations

import asyncio
import pytest

from recipe.spa.env_pool import EnvFailure, EnvPool

TOY = "tests.recipe.helpers:ToyEnv"


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("backend", ["process", "thread"])
def test_episode_and_reuse(backend):
    pool = EnvPool(num_workers=2, backend=backend, step_timeout=20, reset_timeout=60)

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
    pool = EnvPool(num_workers=1, backend="process", step_timeout=1.0, reset_timeout=60)

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
    pool = EnvPool(num_workers=1, backend="process", step_timeout=60, reset_timeout=60)
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
