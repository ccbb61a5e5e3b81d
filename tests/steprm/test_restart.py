"""A restarted online step-reward service never serves its initial weights, without Ray: the trainer hooks notice
a service that is not the one they updated (in-process ``StepRewardModel`` / ``StepRewardServiceActor``), the
actor restores the state it published after its last update, refuses to serve when it cannot, and an update
retried after it was applied is not applied twice. Ray's restart flag is the one thing faked
(``service.ray_restart_info``); ``test_restart_ray.py`` kills a real actor."""

from __future__ import annotations

import json
import os

import pytest
import torch

import spa_reward.steprm.service as service_mod
from spa_reward.steprm.service import (ServiceNotRestoredError, StepRewardModel, StepRewardServiceActor,
                                       publish_state, restore_state)
from spa_reward.steprm.trainer_hooks import StepRewardHooks, episode_items
from tests.recipe.helpers import trainer_config
from tests.steprm.helpers import tiny_backbone

PROMPTS = [torch.tensor([1, 2, 3]), torch.tensor([1, 2, 4])]
MASKS = [torch.tensor([1, 1, 0, 1]), torch.tensor([1, 1, 1])]
OLD_LP = [torch.tensor([-1.0, -2.0, 0.0, -0.5]), torch.tensor([-0.1, -0.2, -0.3])]
SETTINGS = dict(objective="implicit", online=True, backbone_config=tiny_backbone(vocab_size=20), lr=1e-2, beta=0.5,
                device="cpu")


def columns(step: int) -> dict:
    """Batch ``step``: one won and one lost episode in a group, responses that differ per batch."""
    responses = [torch.tensor([10, 11, 12, 13]) + step % 3, torch.tensor([14, 15, 16]) - step % 2]
    return {"prompts": PROMPTS, "responses": responses, "response_mask": MASKS, "uid": [f"g{step}"] * 2,
            "episode_info": [{"won": True}, {"won": False}], "episode_reward": [1.0, 0.0], "old_log_probs": OLD_LP,
            "rm_scores": [torch.zeros(4), torch.zeros(3)]}


def items(step: int) -> list[dict]:
    c = columns(step)
    return episode_items(c["prompts"], c["responses"], c["response_mask"], c["uid"], c["episode_info"],
                         c["episode_reward"], OLD_LP)[0]


def hooks_for(service, tmp_path, *overrides: str) -> StepRewardHooks:
    cfg = trainer_config("algorithm.reward=istar", f"trainer.default_local_dir={tmp_path}", *overrides)
    return StepRewardHooks(cfg, service=service)


def actor(hooks: StepRewardHooks, monkeypatch, restarted: bool = False, state_dir=None) -> StepRewardServiceActor:
    """The service actor body in process, as Ray would (re)create it for ``hooks``' run."""
    monkeypatch.setattr(service_mod, "ray_restart_info", lambda: (restarted, 1 if restarted else 0))
    return StepRewardServiceActor(dict(SETTINGS), state_dir=state_dir or hooks.rolling_dir(), run_token=hooks.run_token)


def test_hooks_notice_a_service_that_lost_their_updates(tmp_path):
    """A plain in-process model swapped for a fresh one (what an un-restored restart looks like): the next call of
    any kind (score, update, save) stops with the versions, never scores with the initial weights."""
    hooks = hooks_for(StepRewardModel(SETTINGS), tmp_path)
    for step in range(2):
        metrics: dict = {}
        hooks.process(columns(step), metrics)
    assert hooks.expected["version"] == 2 and metrics["steprm/version"] == 2.0 and metrics["steprm/restarts"] == 0.0
    hooks.handle = StepRewardModel(SETTINGS)  # version 0: the initial weights
    with pytest.raises(RuntimeError, match=r"is at version 0 .*left it at version 2.*resume_mode=auto"):
        hooks.process(columns(2), {})
    with pytest.raises(RuntimeError, match="is at version 0"):
        hooks.save(tmp_path / "global_step_2")
    assert not (tmp_path / "global_step_2").exists()
    assert hooks.handle.stats["score_calls"] == 0 and hooks.handle.version == 0  # neither scored nor trained


def test_a_restarted_actor_restores_its_last_update_and_scores_like_an_uninterrupted_one(tmp_path, monkeypatch):
    reference = hooks_for(StepRewardModel(SETTINGS), tmp_path / "ref")  # never interrupted
    hooks = hooks_for(None, tmp_path)
    hooks.handle = actor(hooks, monkeypatch)
    pointer = json.loads((tmp_path / "steprm_latest" / "LATEST.json").read_text())
    assert pointer["version"] == 0 and pointer["state"] is None and pointer["token"] == hooks.run_token
    for step in range(2):
        got, want = {}, {}
        hooks.process(columns(step), got)
        reference.process(columns(step), want)
    first = hooks.handle.identity()["incarnation"]

    hooks.handle = actor(hooks, monkeypatch, restarted=True)  # Ray ran __init__ again with the same arguments
    ident = hooks.handle.identity()
    assert ident["version"] == 2 and ident["restarted"] and ident["not_restored"] is None
    # no checkpoint yet: the base is the initial model, the two updates were journaled and are replayed
    assert ident["incarnation"] != first
    assert ident["restored_from"] == str(tmp_path / "steprm_latest" / "(initial model)") + " + 2 journaled updates"
    got, want = {}, {}
    new, expected = hooks.process(columns(2), got), reference.process(columns(2), want)  # scored at version 2
    assert [x.tolist() for x in new] == [pytest.approx(x.tolist(), abs=1e-6) for x in expected]
    assert got["steprm/restarts"] == 1.0 and want["steprm/restarts"] == 0.0
    assert got["steprm/loss"] == pytest.approx(want["steprm/loss"], abs=1e-6)  # the optimiser state came back too
    after = items(3)
    assert hooks.handle.model.score(after) == [pytest.approx(r, abs=1e-6) for r in reference.handle.score(after)]
    pointer = json.loads((tmp_path / "steprm_latest" / "LATEST.json").read_text())
    assert pointer["version"] == 3 and pointer["state"] is None and len(pointer["journal"]) == 3
    assert sorted(os.listdir(tmp_path / "steprm_latest")) == sorted(["LATEST.json", *pointer["journal"]])


def test_an_actor_that_cannot_restore_itself_refuses_and_the_run_stops(tmp_path, monkeypatch):
    hooks = hooks_for(None, tmp_path)
    hooks.handle = actor(hooks, monkeypatch)
    hooks.process(columns(0), {})
    hooks.process(columns(1), {})
    hooks.save(tmp_path / "global_step_1")  # the checkpoint is at version 2 ...
    hooks.process(columns(2), {})  # ... the trainer expects 3

    (tmp_path / "steprm_latest" / "LATEST.json").unlink()  # the published state is gone
    broken = actor(hooks, monkeypatch, restarted=True)
    assert broken.identity()["not_restored"] and "no published state" in broken.identity()["not_restored"]
    with pytest.raises(ServiceNotRestoredError, match="refuses to serve rewards from its initial weights"):
        asyncio_run(broken.score(items(0)))  # what a reward worker gets
    with pytest.raises(ServiceNotRestoredError):
        asyncio_run(broken.save(str(tmp_path / "x")))
    hooks.handle = broken
    with pytest.raises(RuntimeError, match=r"could not restore itself .*expects version 3.*global_step_1.*version 2"):
        hooks.process(columns(3), {})
    assert broken.model.stats["score_calls"] == 0 and broken.model.version == 0

    # with a checkpoint of this run at the expected version, the hooks load it and go on
    hooks.handle = actor(hooks, monkeypatch)
    hooks.expected = None
    hooks.process(columns(0), {})
    hooks.save(tmp_path / "global_step_9")
    (tmp_path / "steprm_latest" / "LATEST.json").unlink()
    hooks.handle = actor(hooks, monkeypatch, restarted=True)
    metrics: dict = {}
    hooks.process(columns(1), metrics)
    assert metrics["steprm/version"] == 2.0 and metrics["steprm/restarts"] == 2.0
    assert hooks.handle.identity()["restored_from"] == str(tmp_path / "global_step_9" / "steprm")


def test_a_restarted_actor_without_state_dir_or_of_another_run_refuses(tmp_path, monkeypatch):
    monkeypatch.setattr(service_mod, "ray_restart_info", lambda: (True, 1))
    lonely = StepRewardServiceActor(dict(SETTINGS))
    assert "started without state_dir" in lonely.identity()["not_restored"]
    with pytest.raises(ServiceNotRestoredError):
        asyncio_run(lonely.update(items(0)))
    model = StepRewardModel(SETTINGS)
    model.update(items(0))
    publish_state(model, tmp_path, token="run-a")
    other = StepRewardServiceActor(dict(SETTINGS), state_dir=str(tmp_path), run_token="run-b")
    assert "published by another run" in other.identity()["not_restored"]
    asyncio_run(other.load(str(tmp_path / json.loads((tmp_path / "LATEST.json").read_text())["state"])))
    assert other.identity()["not_restored"] is None and other.identity()["version"] == 1  # load() restores it
    assert asyncio_run(other.score(items(1))) == [pytest.approx(r, abs=1e-6) for r in model.score(items(1))]
    frozen = StepRewardServiceActor(dict(SETTINGS, online=False))  # a frozen scorer comes back whole
    assert frozen.identity()["not_restored"] is None and len(asyncio_run(frozen.score(items(0)))) == 2


def test_published_state_is_checked_before_it_loads(tmp_path):
    model = StepRewardModel(SETTINGS)
    model.update(items(0))
    (tmp_path / "v00000000-killed").mkdir()  # left by a writer killed before it published
    (tmp_path / ".LATEST.json.dead.tmp").write_text("{")
    pointer = publish_state(model, tmp_path, token="t")
    assert sorted(os.listdir(tmp_path)) == ["LATEST.json", pointer["state"]]
    assert pointer["version"] == 1 and (tmp_path / pointer["state"] / "weights.safetensors").is_file()
    fresh = StepRewardModel(SETTINGS)
    restore_state(fresh, tmp_path, "t")
    assert fresh.version == 1 and fresh.score(items(1)) == [pytest.approx(r, abs=1e-6) for r in model.score(items(1))]
    with pytest.raises(ValueError, match="only version 0"):
        publish_state(model, tmp_path, token="t", with_state=False)
    for bad, match in (({"state": "../escape"}, "not a plain child folder name"), ({"state": "nope"}, "does not load"),
                       ({"state_version": 5}, "holds version 1"), ({"version": 5}, "says version 5"),
                       ({"format": 99}, "format 99")):
        (tmp_path / "LATEST.json").write_text(json.dumps({**pointer, **bad}))
        with pytest.raises(ServiceNotRestoredError, match=match):
            restore_state(StepRewardModel(SETTINGS), tmp_path, "t")
    (tmp_path / "LATEST.json").write_text("{torn")
    with pytest.raises(ServiceNotRestoredError, match="unreadable"):
        restore_state(StepRewardModel(SETTINGS), tmp_path, "t")
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_an_update_retried_after_it_was_applied_is_not_applied_twice(tmp_path, monkeypatch):
    monkeypatch.setattr(service_mod, "ray_restart_info", lambda: (False, 0))
    a = StepRewardServiceActor(dict(SETTINGS), state_dir=str(tmp_path), run_token="t")
    first = asyncio_run(a.update(items(0), 0))
    again = asyncio_run(a.update(items(0), 0))  # the reply of the first was lost; Ray / call_service retried it
    assert a.model.version == 1 and again["steprm/retried_update"] == 1.0
    assert again["steprm/loss"] == first["steprm/loss"] and again["steprm/version"] == 1.0
    monkeypatch.setattr(service_mod, "ray_restart_info", lambda: (True, 1))
    b = StepRewardServiceActor(dict(SETTINGS), state_dir=str(tmp_path), run_token="t")  # died after publishing
    assert asyncio_run(b.update(items(0), 0))["steprm/loss"] == first["steprm/loss"] and b.model.version == 1
    with pytest.raises(RuntimeError, match="from version 5, but it is at version 1"):
        asyncio_run(b.update(items(1), 5))


def asyncio_run(coro):
    import asyncio

    return asyncio.run(coro)


def test_publish_every_bounds_the_journal_and_a_restart_replays_it(tmp_path, monkeypatch):
    """publish_every=2: a full state after updates 2, 4, ...; the updates in between are journaled (their batches),
    so a restart after update 3 restores version 3 (state 2 + update 3 replayed) and the run goes on; a bad value
    is refused by the config check."""
    from spa_reward.steprm.trainer_hooks import plan_problems

    hooks = hooks_for(None, tmp_path)
    reference = hooks_for(StepRewardModel(SETTINGS), tmp_path / "ref")
    monkeypatch.setattr(service_mod, "ray_restart_info", lambda: (False, 0))
    hooks.handle = StepRewardServiceActor(dict(SETTINGS), state_dir=hooks.rolling_dir(), run_token=hooks.run_token,
                                          publish_every=2)
    latest = tmp_path / "steprm_latest" / "LATEST.json"
    published = []
    for step in range(3):
        hooks.process(columns(step), {})
        reference.process(columns(step), {})
        p = json.loads(latest.read_text())
        published.append((p["version"], p["state_version"], len(p["journal"])))
    assert published == [(1, 0, 1), (2, 2, 0), (3, 2, 1)]
    hooks.handle = actor(hooks, monkeypatch, restarted=True)
    assert hooks.handle.identity()["version"] == 3 and "+ 1 journaled updates" in hooks.handle.identity()["restored_from"]
    got, want = {}, {}
    new, expected = hooks.process(columns(3), got), reference.process(columns(3), want)
    assert [x.tolist() for x in new] == [pytest.approx(x.tolist(), abs=1e-6) for x in expected]
    assert got["steprm/loss"] == pytest.approx(want["steprm/loss"], abs=1e-6) and got["steprm/restarts"] == 1.0
    bad = trainer_config("algorithm.reward=istar", "algorithm.istar.publish_every=0")
    assert any("algorithm.istar.publish_every=0" in p for p in plan_problems(bad))
    with pytest.raises(ValueError, match="publish_every=0"):
        StepRewardServiceActor(dict(SETTINGS), publish_every=0)


def test_publication_costs_the_batch_and_a_checkpoint_is_referenced_not_copied(tmp_path, monkeypatch):
    """Issue 20 item 7: an update publishes its batch (KB), not the weights and optimiser state; a checkpoint save
    becomes the published base without a second copy; a restart after it replays only the later updates."""
    hooks = hooks_for(None, tmp_path)
    reference = hooks_for(StepRewardModel(SETTINGS), tmp_path / "ref")
    hooks.handle = actor(hooks, monkeypatch)
    metrics: dict = {}
    hooks.process(columns(0), metrics)
    reference.process(columns(0), {})
    rolling = tmp_path / "steprm_latest"
    (entry,) = json.loads((rolling / "LATEST.json").read_text())["journal"]
    journaled = json.loads((rolling / entry).read_text())  # the update's input: the batch's two episodes
    assert [(it["input_ids"], it["success"]) for it in journaled] == [(it["input_ids"], it["success"])
                                                                      for it in items(0)]
    hooks.save(tmp_path / "global_step_1")
    state_mb = sum(f.stat().st_size for f in (tmp_path / "global_step_1" / "steprm").rglob("*")) / 2**20
    assert 0 < metrics["steprm/published_mb"] < state_mb / 20, (metrics, state_mb)
    pointer = json.loads((rolling / "LATEST.json").read_text())
    assert pointer["state"] == "../global_step_1/steprm" and pointer["journal"] == [] and pointer["version"] == 1
    assert os.listdir(rolling) == ["LATEST.json"]  # the journal before the checkpoint is gone, no state copy
    for step in (1, 2):
        hooks.process(columns(step), {})
        reference.process(columns(step), {})
    hooks.handle = actor(hooks, monkeypatch, restarted=True)
    ident = hooks.handle.identity()
    assert ident["version"] == 3
    assert ident["restored_from"] == str(tmp_path / "global_step_1" / "steprm") + " + 2 journaled updates"
    assert hooks.handle.model.score(items(3)) == [pytest.approx(r, abs=1e-6) for r in reference.handle.score(items(3))]
    # resuming loads a checkpoint: it becomes the base as well
    asyncio_run(hooks.handle.load(str(tmp_path / "global_step_1" / "steprm")))
    assert json.loads((rolling / "LATEST.json").read_text())["state"] == "../global_step_1/steprm"
    assert service_mod.checkpoint_ref(rolling, tmp_path / "elsewhere" / "steprm") is None
    with pytest.raises(ValueError, match="is not a global_step_N/steprm folder"):
        publish_state(hooks.handle.model, rolling, hooks.run_token, checkpoint=tmp_path / "x" / "steprm")
