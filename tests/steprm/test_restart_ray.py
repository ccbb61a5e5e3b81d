"""A real Ray actor killed mid-run: the online step-reward service comes back with the state of its last update
(scores equal those of an uninterrupted service at the same version), for the trainer hooks and for a reward
worker's lookup alike; with nothing to restore, both get the error instead of rewards from the initial weights."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from spa_reward.steprm.service import SERVICE_NAME, StepRewardModel, call_service, start_service
from tests.steprm.test_restart import SETTINGS, columns, hooks_for, items

ray = pytest.importorskip("ray")


from tests.steprm.helpers import local_ray  # noqa: E402,F401  (fixture)


def kill_and_wait_for_restart(handle, timeout_s: float = 60.0) -> dict:
    """``ray.kill`` returns before the actor is down: wait until a new incarnation answers."""
    import time

    before = ray.get(handle.info.remote())["incarnation"]
    ray.kill(handle, no_restart=False)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            info = ray.get(handle.info.remote(), timeout=timeout_s)
        except ray.exceptions.RayActorError:
            info = None
        if info is not None and info["incarnation"] != before:
            return info
        time.sleep(0.2)
    raise AssertionError(f"the actor did not come back within {timeout_s} s")


@pytest.mark.slow  # ~17 s on 2 cores: three Ray restarts of a real actor
def test_a_killed_online_actor_is_restored_or_refuses(local_ray, tmp_path):
    hooks = hooks_for(None, tmp_path)  # algorithm.reward=istar: the service is looked up as SERVICE_NAME
    hooks.handle = start_service(SETTINGS, name=SERVICE_NAME, timeout_s=120, max_restarts=3, max_task_retries=3,
                                 state_dir=hooks.rolling_dir(), run_token=hooks.run_token)
    reference = hooks_for(StepRewardModel(SETTINGS), tmp_path / "ref")  # never interrupted
    try:
        for step in range(2):
            hooks.process(columns(step), {})
            reference.process(columns(step), {})

        ray.kill(hooks.handle, no_restart=False)  # Ray restarts it: __init__ runs again and restores version 2
        got, want = {}, {}
        new, expected = hooks.process(columns(2), got), reference.process(columns(2), want)
        assert [x.tolist() for x in new] == [pytest.approx(x.tolist(), abs=1e-6) for x in expected]
        assert got["steprm/restarts"] == 1.0 and got["steprm/loss"] == pytest.approx(want["steprm/loss"], abs=1e-6)
        info = ray.get(hooks.handle.info.remote())
        assert info["restarted"] and info["ray_restarts"] == 1 and info["version"] == 3

        assert kill_and_wait_for_restart(hooks.handle)["version"] == 3  # restored before it answers anything
        # a reward worker's next call (looked up by name) is answered at version 3
        _, scores = asyncio.run(call_service(None, SERVICE_NAME, "score", items(3), retry_wait_s=1.0))
        assert scores == [pytest.approx(r, abs=1e-6) for r in reference.handle.score(items(3))]

        shutil.rmtree(hooks.rolling_dir())  # nothing left to restore
        assert "no published state" in kill_and_wait_for_restart(hooks.handle)["not_restored"]
        with pytest.raises(Exception, match="refuses to serve rewards from its initial weights"):
            asyncio.run(call_service(None, SERVICE_NAME, "score", items(3), retry_wait_s=1.0))
        with pytest.raises(RuntimeError, match=r"could not restore itself \(.*no published state.*expects version 3"):
            hooks.process(columns(3), {})
        assert hooks.restarts == 3  # Ray's restart count: two of them came between two trainer calls
    finally:
        ray.kill(hooks.handle, no_restart=True)
