"""The service as a real local Ray actor: start-up with a timeout that names the GPUs, scoring through the
reward-worker call path, and recovery after the actor is killed (restart, or a new actor under the same name)."""

from __future__ import annotations

import asyncio

import pytest
from spa_reward.steprm.service import call_service, start_service
from tests.steprm.helpers import synthetic_items, tiny_backbone

ray = pytest.importorskip("ray")


from tests.steprm.helpers import local_ray  # noqa: E402,F401  (fixture)


def wait_gone(name: str, timeout_s: float = 60.0) -> None:
    """ray.kill returns before the name is released."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name)
        except ValueError:
            return
        time.sleep(0.2)
    raise AssertionError(f"actor {name!r} still registered after {timeout_s} s")


def settings():
    return dict(objective="progress", online=True, backbone_config=tiny_backbone(), lr=1e-3, device="cpu")


def test_start_score_kill_and_recover(local_ray):
    items, _ = synthetic_items(4, seed=0)
    frozen = dict(settings(), online=False)  # a restarted online service restores its state: test_restart_ray.py
    actor = start_service(frozen, name="steprm_test", timeout_s=120, max_restarts=2, max_task_retries=2)
    expected = ray.get(actor.score.remote(items))

    # killed: Ray restarts it under the same name, and the reward worker's next call succeeds
    ray.kill(actor, no_restart=False)
    handle, got = asyncio.run(call_service(actor, "steprm_test", "score", items, retry_wait_s=1.0))
    assert [pytest.approx(x, abs=1e-6) for x in expected] == got  # same seed: the same initial weights

    # killed for good and replaced by a new actor of the same name: the stale handle is looked up again once
    ray.kill(handle, no_restart=True)
    wait_gone("steprm_test")
    replacement = start_service(settings(), name="steprm_test", timeout_s=120)  # keep a reference: owned by us
    _, again = asyncio.run(call_service(handle, "steprm_test", "score", items, retry_wait_s=1.0))
    assert len(again) == len(items)

    # down and not replaced: a clear error
    ray.kill(replacement, no_restart=True)
    wait_gone("steprm_test")
    with pytest.raises(RuntimeError, match="no step-reward service actor named 'steprm_test'"):
        asyncio.run(call_service(handle, "steprm_test", "score", items, retry_wait_s=0.5))


def test_unschedulable_gpu_request_times_out_with_the_request(local_ray):
    with pytest.raises(TimeoutError, match=r"num_gpus=1.*did not start within 3 s"):
        start_service(settings(), name="steprm_gpu", num_gpus=1, timeout_s=3)
    ray.kill(ray.get_actor("steprm_gpu"), no_restart=True)


def test_concurrent_calls_are_coalesced_and_a_bad_one_fails_alone(local_ray):
    items, _ = synthetic_items(6, seed=1)
    actor = start_service(settings(), name="steprm_coalesce", timeout_s=120)
    single = [ray.get(actor.score.remote([it])) for it in items[:3]]

    async def many():
        good = [actor.score.remote([it]) for it in items]
        bad = actor.score.remote([{"input_ids": [1, 2], "turn_spans": [[1, 5]]}])
        results = await asyncio.gather(*good)
        try:
            await bad
        except Exception as e:  # RayTaskError wrapping the ValueError
            return results, str(e)
        return results, ""

    results, error = asyncio.run(many())
    assert [r[0] for r in results[:3]] == [pytest.approx(s[0], abs=1e-6) for s in single]
    assert "turn_spans[0]=[1, 5]" in error
    assert ray.get(actor.info.remote())["stats"]["score_calls"] < 3 + len(items)  # merged forwards
    ray.kill(actor, no_restart=True)
