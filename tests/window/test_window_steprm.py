"""Online step-reward models in the window layout (env.history=window): an episode's rows (one per step, TransferQueue
keys ``{uid}_{session_id}_{t}``) are grouped back into one training episode. iStar's trajectory DPO scores an episode
by the mean of beta * q_t over ALL its turns (across rows) and pairs (success, failure) episodes of a uid group;
online SPA regresses the sum of the episode's rows' c_t onto R. Scoring stays per row."""

from __future__ import annotations

import asyncio
import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from envs.actions import format_action
from spa_reward.steprm import objectives as obj
from spa_reward.steprm.service import StepRewardModel, episode_index, parse_items
from spa_reward.steprm.trainer_hooks import StepRewardHooks, episode_items, skipped_episodes
from tests.recipe.helpers import FakeServer, agent_config, make_agent_loop, postprocess_worker, row, trainer_config
from tests.stepagent.test_prefix import step_row, stepagent_config, toy_cfg, toy_demos  # noqa: F401  (fixture)
from tests.steprm.helpers import tiny_backbone
from tests.window.layouts import toy_env_cfg

# ------------------------------------------------------------------------------------------------ objectives


def test_dpo_loss_and_gradient_window_equal_the_packed_formula():
    """2 episodes of 2 and 3 rows (one turn per row): Q = the mean of the episode's turns, not of its rows; the loss
    and its gradient with respect to every row's value equal the packed layout's (one row per episode)."""
    v = torch.tensor([[0.2], [0.4], [-0.1], [0.1], [0.3]], requires_grad=True)
    valid = torch.ones(5, 1, dtype=torch.bool)
    episode = torch.tensor([0, 0, 1, 1, 1])
    q = obj.episode_trajectory_scores(v, valid, episode, 2)
    assert q.tolist() == pytest.approx([0.3, 0.1])
    loss, pairs = obj.trajectory_dpo_loss(q, torch.tensor([True, False]), torch.tensor([0, 0]))
    assert pairs == 1 and loss.item() == pytest.approx(math.log1p(math.exp(-0.2)))  # -log sigmoid(0.3 - 0.1)
    loss.backward()
    s = 1 / (1 + math.exp(0.2))  # sigmoid(-0.2) = -dL/dQ_w = dL/dQ_l
    assert v.grad.flatten().tolist() == pytest.approx([-s / 2, -s / 2, s / 3, s / 3, s / 3])
    # the packed layout: the same five turn values in two rows (2 and 3 turns)
    packed = torch.tensor([[0.2, 0.4, 0.0], [-0.1, 0.1, 0.3]], requires_grad=True)
    pvalid = torch.tensor([[True, True, False], [True, True, True]])
    ploss, _ = obj.trajectory_dpo_loss(obj.trajectory_scores(packed, pvalid), torch.tensor([True, False]),
                                       torch.tensor([0, 0]))
    ploss.backward()
    assert ploss.item() == pytest.approx(loss.item(), abs=1e-7)
    assert packed.grad[pvalid].tolist() == pytest.approx(v.grad.flatten().tolist(), abs=1e-7)


def test_episode_score_is_the_mean_over_turns_not_rows():
    """A row with two turns counts twice: episode 1 = rows [(-0.1, 0.1), (0.6,)] -> Q = 0.6 / 3 = 0.2 (the mean of
    row means would be 0.3); one row per episode gives trajectory_scores exactly."""
    v = torch.tensor([[0.5, 0.0], [-0.1, 0.1], [0.6, 0.0]])
    valid = torch.tensor([[True, False], [True, True], [True, False]])
    assert obj.episode_trajectory_scores(v, valid, torch.tensor([0, 1, 1]), 2).tolist() == pytest.approx([0.5, 0.2])
    rows = obj.episode_trajectory_scores(v, valid, torch.arange(3), 3)
    assert torch.equal(rows, obj.trajectory_scores(v, valid))


def test_progress_loss_over_rows_is_the_mse_of_the_episode_sums():
    """Episodes of 2 and 3 rows, R = 1 and 0: sums 0.3 + 0.5 = 0.8 and 0.1 - 0.2 + 0.4 = 0.3 ->
    ((0.8 - 1)^2 + 0.3^2) / 2 = 0.065; the gradient of a row is 2 (S_e - R_e) / E."""
    c = torch.tensor([[0.3], [0.5], [0.1], [-0.2], [0.4]], requires_grad=True)
    valid = torch.ones(5, 1, dtype=torch.bool)
    loss = obj.progress_loss(c, valid, torch.tensor([1.0, 0.0]), episode_index=torch.tensor([0, 0, 1, 1, 1]))
    assert loss.item() == pytest.approx(0.065)
    loss.backward()
    assert c.grad.flatten().tolist() == pytest.approx([-0.2, -0.2, 0.3, 0.3, 0.3])
    packed = obj.progress_loss(torch.tensor([[0.3, 0.5, 0.0], [0.1, -0.2, 0.4]]),
                               torch.tensor([[True, True, False], [True, True, True]]), torch.tensor([1.0, 0.0]))
    assert packed.item() == pytest.approx(loss.item(), abs=1e-7)


def _padded(rows: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    k = max(len(r) for r in rows)
    values = torch.tensor([r + [0.0] * (k - len(r)) for r in rows], dtype=torch.float64)
    return values, torch.tensor([[t < len(r) for t in range(k)] for r in rows])


VALUE = st.floats(-5, 5, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(episodes=st.lists(st.lists(st.lists(VALUE, min_size=1, max_size=3), min_size=1, max_size=4), min_size=1,
                         max_size=4),
       data=st.data())
def test_any_split_of_episodes_into_rows_gives_the_packed_numbers(episodes, data):
    """Any episodes cut into any rows: Q per episode and the progress loss equal the packed layout's (each episode
    one row holding all its turns)."""
    rows = [r for ep in episodes for r in ep]
    index = torch.tensor([e for e, ep in enumerate(episodes) for _ in ep])
    window, wvalid = _padded(rows)
    packed, pvalid = _padded([[x for r in ep for x in r] for ep in episodes])
    q = obj.episode_trajectory_scores(window, wvalid, index, len(episodes))
    assert torch.allclose(q, obj.trajectory_scores(packed, pvalid), atol=1e-9)
    rewards = torch.tensor(data.draw(st.lists(VALUE, min_size=len(episodes), max_size=len(episodes))))
    assert obj.progress_loss(window, wvalid, rewards, episode_index=index).item() == pytest.approx(
        obj.progress_loss(packed, pvalid, rewards).item(), rel=1e-6, abs=1e-6)


# ------------------------------------------------------------------------------------------------ service


def window_items(seed: int = 0, vocab: int = 20) -> list[dict]:
    """Five rows: episode "g_0" (rows 0, 1: won, R = 1) and "g_1" (rows 2, 3, 4: lost, R = 0; row 2 has two turns),
    one uid group; each row = its own prompt + reply."""
    g = torch.Generator().manual_seed(seed)
    specs = [("g_0", True, 1.0, 1), ("g_0", True, 1.0, 1), ("g_1", False, 0.0, 2), ("g_1", False, 0.0, 1),
             ("g_1", False, 0.0, 1)]
    items = []
    for ep, won, r, turns in specs:
        plen, reply = 4, 3
        n = plen + turns * (reply + 1)
        ids = torch.randint(1, vocab, (n,), generator=g).tolist()
        spans = [[plen + t * (reply + 1), plen + t * (reply + 1) + reply] for t in range(turns)]
        ref = (-torch.rand(n, generator=g) * 3).tolist()
        items.append({"input_ids": ids, "prompt_length": plen, "turn_spans": spans, "ref_logprobs": ref,
                      "uid": "g", "success": won, "reward": r, "episode": ep})
    return items


def capture_grads(svc):
    """Replace the optimiser step by a copy of the gradients (so a test compares them before any step)."""
    grads = []

    def step():
        grads.append({k: p.grad.detach().clone() for k, p in svc.model.named_parameters()
                      if p.requires_grad and p.grad is not None})
        svc.optimizer.zero_grad(set_to_none=True)

    svc._clip_and_step = step
    return grads


def reference_grads(svc, items, loss_of):
    """Gradients of ``loss_of(values (rows, K), valid)`` from ONE forward over every row (no micro-batches)."""
    model = copy.deepcopy(svc.model).train()
    prepared = svc._prepare(parse_items(items, svc.settings.objective, need_ref=svc.settings.objective == "implicit"))
    values = svc._forward(model, prepared, grad=True)
    valid = torch.arange(values.shape[1]).unsqueeze(0) < torch.tensor([len(p[1]) for p in prepared]).unsqueeze(1)
    loss = loss_of(values, valid)
    loss.backward()
    return loss.item(), {k: p.grad for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("objective", ["implicit", "progress"])
def test_service_update_on_window_rows_is_the_episode_loss(objective):
    """micro_batch_size=2 splits both episodes over micro-batches; the update's loss is the episode loss of the
    scored per-turn values (hand formula) and its gradient equals one full-batch backward of that formula."""
    torch.manual_seed(0)
    if objective == "implicit":
        settings = dict(objective="implicit", backbone_config=tiny_backbone(vocab_size=20), beta=0.5)
    else:
        settings = dict(objective="progress", backbone_config=tiny_backbone(vocab_size=20), head="linear")
    svc = StepRewardModel(dict(settings, online=True, lr=1e-2, micro_batch_size=2, device="cpu"))
    items = window_items()
    scored = svc.score(items)  # serving copy = the training weights before the first update
    assert [len(r) for r in scored] == [1, 1, 2, 1, 1]
    if objective == "implicit":
        qa = sum(scored[0] + scored[1]) / 2
        qb = sum(scored[2] + scored[3] + scored[4]) / 4  # four turns in three rows
        hand = -math.log(1 / (1 + math.exp(-(qa - qb))))

        def loss_of(v, valid):
            turns = v[valid]  # row-major: rows 0, 1 | 2 (two turns), 3, 4
            return -F.logsigmoid(turns[:2].mean() - turns[2:].mean())
    else:
        sa, sb = sum(scored[0] + scored[1]), sum(scored[2] + scored[3] + scored[4])
        hand = ((sa - 1.0) ** 2 + sb ** 2) / 2

        def loss_of(v, valid):
            turns = v[valid]
            return ((turns[:2].sum() - 1.0) ** 2 + turns[2:].sum() ** 2) / 2
    ref_loss, ref = reference_grads(svc, items, loss_of)
    grads = capture_grads(svc)
    metrics = svc.update(items)
    assert metrics["steprm/loss_first"] == pytest.approx(hand, abs=1e-5) == pytest.approx(ref_loss, abs=1e-5)
    assert metrics["steprm/episodes"] == 2.0 and metrics["steprm/rows"] == 5.0
    assert metrics["steprm/pairs"] == (1.0 if objective == "implicit" else 0.0)
    (got,) = grads
    assert set(got) == set(ref) and got
    for k in ref:
        assert torch.allclose(got[k], ref[k], atol=1e-6, rtol=1e-4), k


def test_rows_without_episode_keep_the_packed_numbers():
    """Items without an episode key (or with one row per episode) train on exactly the packed path: the same
    weights after one update, bit for bit."""
    outs = []
    for key in (None, "own"):
        torch.manual_seed(0)
        svc = StepRewardModel(dict(objective="implicit", backbone_config=tiny_backbone(vocab_size=20), beta=0.5,
                                   online=True, lr=1e-2, micro_batch_size=2, device="cpu"))
        items = window_items()
        for i, it in enumerate(items):
            it["success"], it["reward"] = i % 2 == 0, float(i % 2 == 0)
            if key is None:
                it.pop("episode")
            else:
                it["episode"] = f"{key}{i}"
        m = svc.update(items)
        outs.append((m["steprm/loss"], [p.detach().clone() for p in svc.model.parameters()]))
    assert outs[0][0] == outs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(outs[0][1], outs[1][1]))


def test_rows_of_one_episode_must_agree():
    items = window_items()
    items[1]["reward"] = 0.5
    with pytest.raises(ValueError, match=r"item 1: episode 'g_0' has reward=0.5 here and 1.0 at item 0"):
        parse_items(items, "implicit", need_ref=True)
    index, first = episode_index(parse_items(window_items(), "implicit", need_ref=True) +
                                 parse_items([{"input_ids": [1, 2], "turn_spans": [[1, 2]]}] * 2, "implicit", False))
    assert index.tolist() == [0, 0, 1, 1, 1, 2, 3] and first == [0, 2, 5, 6]  # no key: an episode of its own


def test_replay_window_and_save_load_keep_the_episode(tmp_path):
    """The replay window trains on both batches' episodes (keys made unique per batch); save/load keep the key; a
    replay file written before items had one still loads (as packed items)."""
    torch.manual_seed(0)
    settings = dict(objective="progress", backbone_config=tiny_backbone(vocab_size=20), head="linear", online=True,
                    lr=1e-2, replay_batches=2, device="cpu")
    svc = StepRewardModel(settings)
    svc.update(window_items(0))
    m = svc.update(window_items(1))  # same episode names in the next batch: still four distinct episodes
    assert m["steprm/episodes"] == 4.0 and m["steprm/rows"] == 10.0
    svc.save(tmp_path / "s")
    saved = json.loads((tmp_path / "s" / "replay.json").read_text())
    assert [it["episode"] for it in saved[1]] == ["1/g_0"] * 2 + ["1/g_1"] * 3
    other = StepRewardModel(settings)
    other.load(tmp_path / "s")
    assert [[it.episode for it in b] for b in other.window] == [[it["episode"] for it in b] for b in saved]
    for b in saved:
        for it in b:
            del it["episode"]
    (tmp_path / "s" / "replay.json").write_text(json.dumps(saved))
    old = StepRewardModel(settings)
    old.load(tmp_path / "s")
    assert all(it.episode == "" for b in old.window for it in b) and len(old.window) == 2


# ------------------------------------------------------------------------------------------------ hooks


def test_hooks_group_the_rows_of_a_session_and_never_across_sessions(transfer_queue):
    """on_batch reads the episode from the TransferQueue keys: rows u_0_0..u_0_2 are one episode, u_1_0..u_1_1
    another (same uid, other session), v_0_0 a third; a failed row drops its whole episode (counted once)."""
    from transfer_queue import KVBatchMeta
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    tq = transfer_queue
    keys = ["u_0_0", "u_0_1", "u_0_2", "u_1_0", "u_1_1", "v_0_0"]
    won = {"u_0": True, "u_1": False, "v_0": True}
    rows = []
    for k in keys:
        s = k.rsplit("_", 1)[0]
        rows.append({"prompts": torch.tensor([1, 2, 3]), "responses": torch.tensor([4, 5]),
                     "response_mask": torch.tensor([1, 1]), "rm_scores": torch.zeros(2),
                     "old_log_probs": torch.tensor([-1.0, -1.0]), "uid": s[0],
                     "episode_info": {"won": won[s], "env_error": "timeout" if k == "v_0_0" else ""},
                     "episode_reward": 10.0 * won[s]})
    tq.kv_batch_put(keys=keys, fields=list_of_dict_to_tensordict(rows), partition_id="train")

    class Spy(StepRewardModel):
        def update(self, batch):
            self.trained = list(batch)
            return super().update(batch)

    torch.manual_seed(0)
    svc = Spy(dict(objective="implicit", online=True, backbone_config=tiny_backbone(vocab_size=20), lr=1e-2,
                   beta=0.5, device="cpu"))
    hooks = StepRewardHooks(trainer_config("algorithm.reward=istar", "env.history=window"), service=svc)
    metrics: dict = {}
    hooks.on_batch(KVBatchMeta(keys=keys, tags=[{}] * len(keys), partition_id="train"), metrics)
    assert [it["episode"] for it in svc.trained] == ["u_0"] * 3 + ["u_1"] * 2  # v_0 failed: left out
    assert metrics["steprm/skipped_episodes"] == 1.0 and metrics["steprm/episodes"] == 2.0
    assert metrics["steprm/rows"] == 5.0 and metrics["steprm/pairs"] == 1.0  # u_0 (won) vs u_1 (lost), one uid


def test_a_failed_row_fails_its_whole_episode():
    p, r, m = [torch.tensor([1])] * 3, [torch.tensor([2, 3])] * 3, [torch.tensor([1, 1])] * 3
    infos = [{"won": False}, {"won": False, "env_failed": True}, {"won": True}]
    items, ok = episode_items(p, r, m, ["u"] * 3, infos, [0.0] * 3, episodes=["u_0", "u_0", "u_1"])
    assert ok == [False, False, True] and skipped_episodes(items, ok) == 1
    items, ok = episode_items(p, r, m, ["u"] * 3, infos, [0.0] * 3)  # packed: rows are episodes
    assert ok == [True, False, True] and skipped_episodes(items, ok) == 1


# ------------------------------------------------------------------------------------------------ through the loop


def reply(turn, prompt):
    return format_action("step forward", "go " * (turn + 1), "react")


def waiting(turn, prompt):
    return format_action("wait", "hm " * (turn + 1), "react")


def play_window(tokenizer, cfg, sessions, monkeypatch, loop_config=None, scorer=None):
    """Play ``sessions`` = [(policy, run kwargs)] in the window layout through verl's streaming reward call and the v1
    postprocess (captured put); returns the trainer's columns over all rows (as on_batch reads them), the outputs and
    the TransferQueue keys. ``scorer``: the spa reward manager's scorer (the in-process service)."""
    from verl.trainer.ppo.reward import load_reward_manager
    from verl.trainer.ppo.v1 import agent_loop_tq

    from spa_reward.trainer import session_layout

    puts = []

    async def fake_put(keys, fields, tags, partition_id):
        puts.append((keys, fields))

    monkeypatch.setattr(agent_loop_tq.tq, "async_kv_batch_put", fake_put)
    env = toy_env_cfg(history="window", history_length=1, max_steps=4)

    async def go():
        manager = load_reward_manager(cfg, tokenizer, **({"scorer": scorer} if scorer is not None else {}))
        worker = postprocess_worker(manager)
        outs = []
        for policy, kwargs in sessions:
            loop = make_agent_loop(loop_config or agent_config(env), FakeServer(tokenizer, policy), tokenizer)
            o = await loop.run({"temperature": 1.0, "logprobs": True}, **kwargs)
            await worker._agent_loop_postprocess(o, False, **kwargs)
            outs += o
        return outs

    outs = asyncio.run(go())
    keys = [k for ks, _ in puts for k in ks]
    cols = {n: [] for n in ("prompts", "responses", "response_mask", "old_log_probs", "rm_scores", "uid",
                            "episode_info", "episode_reward", "stepagent")}
    for ks, f in puts:
        for i in range(len(ks)):
            o = outs[len(cols["uid"])]
            n = len(o.response_ids)
            cols["prompts"].append(torch.tensor(o.prompt_ids))
            cols["responses"].append(torch.tensor(o.response_ids))
            cols["response_mask"].append(torch.tensor(o.response_mask))
            cols["old_log_probs"].append(torch.tensor(o.response_logprobs))  # verl's old-log-prob step here
            cols["rm_scores"].append(f["rm_scores"][i][:n].clone())
            for name in ("uid", "episode_info", "episode_reward", "stepagent"):
                cols[name].append(f[name][i])
    sessions_, steps, _ = session_layout(keys)
    cols["episode"], cols["step_index"] = list(sessions_), [int(s) for s in steps]
    return cols, outs, keys


def test_istar_window_episode_through_the_loop_trains_and_scores_each_reply(tokenizer, toy_env, monkeypatch):
    """Two sessions of one uid (won in 3 steps / lost after 4): istar's hooks add beta * q_t (pre-update weights)
    on each row's last reply token only, q_t summed over that row's reply against its old log-probs; one update
    pairs the two episodes (not rows)."""
    cfg = trainer_config("algorithm.reward=istar", "env.history=window", "env.history_length=1", "env.name=toy")
    cols, outs, keys = play_window(tokenizer, cfg, [(reply, row("t2", uid="g", session_id=0)),
                                                    (waiting, row("t2", uid="g", session_id=1))], monkeypatch)
    assert keys == ["g_0_0", "g_0_1", "g_0_2", "g_1_0", "g_1_1", "g_1_2", "g_1_3"]
    assert [i["won"] for i in cols["episode_info"]] == [True] * 3 + [False] * 4
    torch.manual_seed(0)
    beta = 0.5
    svc = StepRewardModel(dict(objective="implicit", online=True, backbone_config=tiny_backbone(len(tokenizer)),
                               beta=beta, lr=1e-2, micro_batch_size=2, device="cpu"))
    serving = copy.deepcopy(svc.serving)
    hooks = StepRewardHooks(cfg, service=svc)
    before = [s.clone() for s in cols["rm_scores"]]
    metrics: dict = {}
    new = hooks.process(cols, metrics)
    for t, (o, b, a) in enumerate(zip(outs, before, new)):
        ids = torch.tensor([list(o.prompt_ids) + list(o.response_ids)])
        with torch.no_grad():
            lp = obj.token_logprobs(serving(input_ids=ids).logits, ids)[0, len(o.prompt_ids):]
        q = float((lp - torch.tensor(o.response_logprobs)).sum())
        diff = (a - b).tolist()
        assert diff[-1] == pytest.approx(beta * q, abs=1e-4), t
        assert all(x == 0.0 for x in diff[:-1]), t  # only the reply's last token, the prompt is not in rm_scores
    assert metrics["steprm/episodes"] == 2.0 and metrics["steprm/rows"] == 7.0 and metrics["steprm/pairs"] == 1.0
    assert svc.version == 1 and math.isfinite(metrics["steprm/loss"])
    changed = any(not torch.equal(p, q) for p, q in zip(svc.serving.parameters(), serving.parameters()))
    assert changed  # the update trained and reached the serving copy


def test_online_spa_window_episode_through_the_loop(tokenizer, toy_env, monkeypatch, tmp_path):
    """Online SPA: the hooks train the progress model on the session's rows as one episode (R / reward_scale = 1),
    and start() refuses an estimator trained in the other layout."""
    from spa_reward.progress.model import ProgressEstimator, ProgressEstimatorConfig, build_tiny_backbone_config

    cfg = trainer_config("algorithm.reward=spa", "algorithm.spa.online.enable=true",
                         f"algorithm.spa.estimator_path={tmp_path / 'est'}", "env.history=window",
                         "env.history_length=1", "env.name=toy", "env.reward_scale=10.0")
    torch.manual_seed(0)
    svc = StepRewardModel(dict(objective="progress", online=True, backbone_config=tiny_backbone(len(tokenizer)),
                               head="linear", lr=1e-2, device="cpu"))
    cols, outs, _ = play_window(tokenizer, cfg, [(reply, row("t2", uid="g", session_id=0))], monkeypatch, scorer=svc)
    assert svc.stats["scored_items"] == len(outs) == 3  # the reward manager scored each row on the same service
    hooks = StepRewardHooks(cfg, service=svc)
    items, _ = episode_items(cols["prompts"], cols["responses"], cols["response_mask"], cols["uid"],
                             cols["episode_info"], cols["episode_reward"], reward_scale=10.0, episodes=cols["episode"])
    c = svc.score(items)
    metrics: dict = {}
    assert hooks.process(cols, metrics) is None  # spa's c_t come from the reward manager, not the hooks
    assert metrics["steprm/loss_first"] == pytest.approx((sum(x for r in c for x in r) - 1.0) ** 2, abs=1e-5)
    assert metrics["steprm/episodes"] == 1.0 and metrics["steprm/rows"] == len(outs) == 3.0
    # an estimator trained on packed rows is refused for this window run (and vice versa)
    est = ProgressEstimatorConfig(backbone_config=build_tiny_backbone_config(vocab_size=len(tokenizer), hidden_size=16))
    ProgressEstimator(est).save_pretrained(tmp_path / "est")
    with pytest.raises(ValueError, match="trained in the full layout but this run uses env.history=window"):
        StepRewardHooks(cfg).start()


@pytest.mark.parametrize("mode", ["irl", "implicit"])
def test_stepagent_window_pairs_from_the_step0_row(tokenizer, toy_env, toy_demos, monkeypatch, mode):  # noqa: F811
    """StepAgent irl / implicit in the window layout: one pair, from the step-0 row (the state = its window prompt,
    which holds the replayed expert steps; the agent action = its reply); the clipped logit / beta * q lands on
    the compared step-0 row's last token only (prm_turns=compared)."""
    cfg = trainer_config("algorithm.reward=stepagent", f"algorithm.stepagent.mode={mode}",
                         f"algorithm.stepagent.expert_path={toy_demos}", "algorithm.adv_estimator=spa",
                         "env.name=toy", "env.reward_scale=10.0", "env.history=window", "env.history_length=2")
    loop_cfg = stepagent_config(toy_cfg(history="window", history_length=2), toy_demos, prefix="reverse")
    cols, outs, keys = play_window(tokenizer, cfg, [(lambda t, p: waiting(t, p) if t == 0 else reply(t, p),
                                                     step_row("t2", 0, uid="g"))], monkeypatch, loop_config=loop_cfg)
    assert len(outs) == 2 and cols["step_index"] == [0, 1]
    torch.manual_seed(0)
    kind = (dict(objective="discriminator", loss="bce", head="linear", reward_clip=5.0) if mode == "irl" else
            dict(objective="implicit", loss="step_dpo", reference="frozen", beta=0.5))
    svc = StepRewardModel(dict(kind, online=True, backbone_config=tiny_backbone(vocab_size=len(tokenizer)), lr=1e-2,
                               device="cpu"))
    pairs_seen = []
    real_update = svc.update
    svc.update = lambda batch: (pairs_seen.extend(batch), real_update(batch))[1]
    hooks = StepRewardHooks(cfg, service=svc)
    items, _ = episode_items(cols["prompts"], cols["responses"], cols["response_mask"], cols["uid"],
                             cols["episode_info"], cols["episode_reward"], episodes=cols["episode"])
    expected = svc.score(items)  # pre-update; implicit: 0 (the PRM starts as its frozen reference)
    before = [s.clone() for s in cols["rm_scores"]]
    metrics: dict = {}
    new = hooks.process(cols, metrics)
    assert metrics["stepagent/pairs"] == 1.0 and metrics["stepagent/compared"] == 1.0
    (pair,) = pairs_seen
    assert pair["input_ids"] == list(outs[0].prompt_ids) and pair["agent_ids"] == list(outs[0].response_ids)
    for row, (b, a, r) in enumerate(zip(before, new, expected)):
        diff = (a - b).tolist()
        want = r[0] if row == 0 else 0.0  # prm_turns=compared (the default): the compared step-0 row only
        assert diff[-1] == pytest.approx(want, abs=1e-6) and all(x == 0.0 for x in diff[:-1])
    assert metrics["steprm/version"] == 1.0
    assert svc.score(items)[0][0] != pytest.approx(expected[0][0], abs=1e-7)  # trained on the pair


def test_validate_config_accepts_the_step_reward_models_in_the_window_layout(tmp_path):
    from spa_reward.config_check import config_problems

    window = ("env.history=window", "env.history_length=2", "algorithm.adv_estimator=gigpo")
    for extra in (("algorithm.reward=istar",),
                  ("algorithm.reward=spa", "algorithm.spa.online.enable=true", "algorithm.spa.estimator_path=/est"),
                  ("algorithm.reward=stepagent", "algorithm.stepagent.mode=irl",
                   f"algorithm.stepagent.expert_path={tmp_path}/demos.parquet")):
        assert config_problems(trainer_config(*window, *extra), check_files=False) == [], extra
    bad = config_problems(trainer_config(*window, "algorithm.reward=istar", "critic.enable=true",
                                         "algorithm.adv_estimator=spa"), check_files=False)
    assert any("critic.enable=true" in p for p in bad)  # what still cannot work is still refused
