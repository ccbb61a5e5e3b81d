"""The sharded step-reward service for real: two CPU ranks on gloo in a local Ray cluster of our own, started by
the trainer hooks from a config with ``ranks=2``, against the one-actor model in process on the same batches.

One module-scoped service serves every test (starting the group costs ~20 s on 2 cores); the tests read its
state (save) instead of assuming an order. Tolerance: fp32 on CPU, so sharded and unsharded agree to float
rounding (the all-gathered values and the gradient sums are added in another order): 1e-5."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time

import pytest

from spa_reward.steprm.service import ServiceNotRestoredError, StepRewardModel, call_service
from tests.steprm.test_restart import SETTINGS, columns, hooks_for, items

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # a 2-rank group (two Ray workers importing torch) and two group restarts: ~2 min

ATOL = 1e-5
NAME = "steprm_sharded_test"


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of our own (its own temp dir), 4 logical CPUs: the coordinator takes none, a rank one."""
    tmp = tempfile.mkdtemp(prefix="ray-i22-", dir="/tmp")  # short: Ray's socket paths have a length limit
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, _temp_dir=tmp)
    yield
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def service(cluster, tmp_path_factory):
    """``(hooks, reference)``: the trainer hooks of an istar run whose PRM has 2 CPU ranks (config keys
    ``algorithm.istar.num_gpus=0 ranks=2``), and an uninterrupted one-actor model that sees the same batches."""
    root = tmp_path_factory.mktemp("sharded")
    hooks = hooks_for(None, root, "algorithm.istar.num_gpus=0", "algorithm.istar.ranks=2",
                      f"+algorithm.istar.service_name={NAME}")
    assert hooks.plan["ranks"] == 2
    hooks.plan["settings"].update(SETTINGS, model_path=None)  # the tiny model of the restart tests
    hooks.start()
    reference = hooks_for(StepRewardModel(SETTINGS), root / "ref")
    yield hooks, reference
    ray.kill(hooks.handle, no_restart=True)


def close(a, b) -> bool:
    return len(a) == len(b) and all(x == pytest.approx(y, abs=ATOL) for x, y in zip(a, b))


def test_sharded_scores_and_updates_equal_the_one_actor_model(service):
    hooks, reference = service
    info = ray.get(hooks.handle.info.remote())
    assert info["ranks"] == 2 and len(info["rank_actors"]) == 2 and info["version"] == hooks_version(hooks)
    for step in range(2):  # score with the pre-update weights, then one update on the same batch
        got, want = {}, {}
        new, expected = hooks.process(columns(step), got), reference.process(columns(step), want)
        assert close([x.tolist() for x in new], [x.tolist() for x in expected])
        assert got["steprm/loss"] == pytest.approx(want["steprm/loss"], abs=ATOL) and got["steprm/pairs"] == 1.0
        assert got["steprm/version"] == want["steprm/version"] == step + 1
    # the updated weights score alike (every item of a bigger batch: both ranks have micro-batches)
    batch = items(5) + items(6) + items(7)
    assert close(ray.get(hooks.handle.score.remote(batch)), reference.handle.score(batch))


def hooks_version(hooks) -> int:
    return 0 if hooks.expected is None else hooks.expected["version"]


def test_save_on_two_ranks_restore_on_one_and_the_reverse(service, tmp_path):
    hooks, _ = service
    hooks.save(tmp_path / "global_step_1")  # the group's checkpoint: DCP shards + state.json
    state = tmp_path / "global_step_1" / "steprm"
    assert (state / "dcp" / ".metadata").is_file() and '"layout": "dcp"' in (state / "state.json").read_text()
    one = StepRewardModel(SETTINGS)  # restore on one rank: the one-actor model reads the sharded state whole
    one.load(state)
    assert one.version == hooks_version(hooks)
    batch = items(8)
    assert close(ray.get(hooks.handle.score.remote(batch)), one.score(batch))
    want = one.update(items(9))  # the next update from the restored state equals the group's own next update
    assert ray.get(hooks.handle.update.remote(items(9)))["steprm/loss"] == pytest.approx(want["steprm/loss"], abs=ATOL)
    one.save(tmp_path / "one")

    # a resumed group (its own sharded checkpoint) gives the rewards and the next update of the uninterrupted one
    ray.get(hooks.handle.load.remote(str(state)))
    assert ray.get(hooks.handle.info.remote())["version"] == one.version - 1
    resumed = StepRewardModel(SETTINGS)
    resumed.load(state)
    assert close(ray.get(hooks.handle.score.remote(batch)), resumed.score(batch))
    assert ray.get(hooks.handle.update.remote(items(9)))["steprm/loss"] == pytest.approx(want["steprm/loss"], abs=ATOL)

    # ... and the reverse: the group restores the one-actor format
    ray.get(hooks.handle.load.remote(str(tmp_path / "one")))
    assert ray.get(hooks.handle.info.remote())["version"] == one.version
    assert close(ray.get(hooks.handle.score.remote(batch)), one.score(batch))
    hooks.expected = None  # the hooks take the loaded version as the new expectation at their next call


def live_placement_groups(name: str) -> list[str]:
    """Ids of the placement groups called ``name`` that still hold their bundles."""
    return sorted(pg_id for pg_id, pg in ray.util.placement_group_table().items()
                  if pg.get("name") == name and pg.get("state") != "REMOVED")


def test_a_restarted_coordinator_frees_its_predecessors_placement_group(service, tmp_path):
    """Ray restarts a killed coordinator (``max_restarts``); its rank actors die with it, but its placement group
    lives as long as the job. The new coordinator removes it before asking for the bundles again (otherwise a PRM
    on dedicated GPUs would wait forever for GPUs its dead predecessor still holds), starts a new group and
    restores the published state."""
    hooks, _ = service
    hooks.process(columns(2), {})  # publishes the state after the update
    hooks.save(tmp_path / "ckpt")
    published = StepRewardModel(SETTINGS)
    published.load(tmp_path / "ckpt" / "steprm")
    before = ray.get(hooks.handle.info.remote())
    (old_group,) = live_placement_groups(f"{NAME}.ranks")

    ray.kill(hooks.handle, no_restart=False)  # as a crash would: Ray restarts it under the same name
    deadline, info = time.monotonic() + 300, before
    while info["incarnation"] == before["incarnation"]:
        assert time.monotonic() < deadline, "the coordinator did not come back"
        time.sleep(0.5)
        try:
            info = ray.get(hooks.handle.info.remote(), timeout=60)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            continue
    groups = live_placement_groups(f"{NAME}.ranks")
    assert len(groups) == 1 and groups != [old_group], (old_group, groups)
    assert info["restored_from"].startswith(hooks.rolling_dir()) and info["version"] == published.version
    assert set(info["rank_actors"]) == set(before["rank_actors"])  # generation 0 again, new actors of those names
    batch = items(4)
    assert close(ray.get(hooks.handle.score.remote(batch)), published.score(batch))
    got = {}  # the trainer sees a new incarnation at the version it expects and goes on
    hooks.process(columns(3), got)
    assert got["steprm/restarts"] == 1.0 and got["steprm/version"] == published.version + 1


def kill_rank(handle, rank: int) -> str:
    info = ray.get(handle.info.remote())
    victim = ray.get_actor(info["rank_actors"][rank])
    ray.kill(victim, no_restart=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # ray.kill returns before the actor is gone
        try:
            ray.get(victim.version.remote(), timeout=5)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return info["incarnation"]
        time.sleep(0.2)
    raise AssertionError("the killed rank still answers")


def test_a_killed_rank_restarts_the_group_from_its_published_state(service, tmp_path):
    hooks, _ = service
    hooks.process(columns(3), {})  # publishes the state after the update
    hooks.save(tmp_path / "ckpt")
    restarts = hooks.restarts
    uninterrupted = StepRewardModel(SETTINGS)
    uninterrupted.load(tmp_path / "ckpt" / "steprm")

    before = kill_rank(hooks.handle, 1)
    # a reward worker's next call: the coordinator finds the dead rank, kills the other, starts a new group,
    # restores the published state and answers, as the uninterrupted model would
    _, scores = asyncio.run(call_service(None, NAME, "score", items(4), retry_wait_s=1.0))
    assert close(scores, uninterrupted.score(items(4)))
    info = ray.get(hooks.handle.info.remote())
    assert info["group_restarts"] == 1 and info["incarnation"] != before and info["generation"] == 1
    assert info["version"] == uninterrupted.version and info["restored_from"].startswith(hooks.rolling_dir())
    got, want = {}, {}  # the trainer sees the restart (a new incarnation at the version it expects) and goes on
    hooks.process(columns(4), got)
    uninterrupted_hooks = hooks_for(uninterrupted, tmp_path / "u")
    uninterrupted_hooks.process(columns(4), want)
    assert got["steprm/restarts"] == restarts + 1 and got["steprm/loss"] == pytest.approx(want["steprm/loss"], abs=ATOL)

    # nothing left to restore: the group comes back empty and refuses, and the trainer gets one clear error
    shutil.rmtree(hooks.rolling_dir())
    kill_rank(hooks.handle, 0)
    with pytest.raises(ServiceNotRestoredError, match="lost a rank and restarted its group.*no published state"):
        ray.get(hooks.handle.score.remote(items(4)))
    with pytest.raises(RuntimeError, match=r"could not restore itself \(.*no published state"):
        hooks.process(columns(5), {})
