"""The ``spa`` and ``gigpo`` estimators against hand-computed values, and their error paths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from spa_reward.advantage import compute_gigpo_advantage, compute_spa_advantage, estimator_inputs

# rows 0-2: uid "a"; row 3: uid "b" (group of one, single truncated turn); row 4: uid "c", no assistant tokens
MASK = torch.tensor(
    [
        [1, 1, 0, 1, 1, 0, 1],  # turns (0-1) (3-4) (6)
        [1, 0, 1, 1, 0, 0, 0],  # turns (0) (2-3)
        [1, 1, 1, 0, 1, 0, 0],  # turns (0-2) (4)
        [1, 1, 0, 0, 0, 0, 0],  # one turn
        [0, 0, 0, 0, 0, 0, 0],  # nothing
    ]
)
INDEX = np.array(["a", "a", "a", "b", "c"], dtype=object)
ANCHORS = np.array([["s0", "s1", "s2"], ["s0", "s1"], ["s0", "s3"], ["t0"], []] + [None], dtype=object)[:-1]


def outcome_rewards():
    r = torch.zeros(MASK.shape)
    r[0, 6], r[2, 4], r[3, 1] = 1.0, 1.0, 0.5
    return r


def cfg(**algo):
    base = {"gamma": 0.5, "lam": 1.0, "gigpo": {"step_advantage_w": 1.0, "mode": "mean_norm"},
            "spa": {"step_advantage_w": 1.0, "mode": "mean_norm"}}
    return OmegaConf.merge(OmegaConf.create(base), OmegaConf.create(algo))


def spread(row_turn_values):
    """Broadcast hand-written per-turn values onto MASK's token layout."""
    out = torch.zeros(MASK.shape, dtype=torch.float64)
    for b, vals in enumerate(row_turn_values):
        k, prev = -1, 0
        for t in range(MASK.shape[1]):
            m = int(MASK[b, t])
            if m and not prev:
                k += 1
            if m:
                out[b, t] = vals[k]
            prev = m
    return out


def test_gigpo_mean_norm_hand_computed():
    adv, ret = compute_gigpo_advantage(outcome_rewards(), MASK, INDEX, cfg(), turn_anchors=ANCHORS)
    # A_E: group a scores [1,0,1], mean 2/3; group b singleton: mean 0 -> 0.5
    # G (gamma .5): row0 [.25,.5,1], row1 [0,0], row2 [.5,1]; step groups s0 {.25,0,.5} s1 {.5,0}; s2,s3,t0 singletons
    expected = spread([
        [1 / 3 + 0.0, 1 / 3 + 0.25, 1 / 3 + 0.0],
        [-2 / 3 - 0.25, -2 / 3 - 0.25],
        [1 / 3 + 0.25, 1 / 3 + 0.0],
        [0.5],
        [],
    ])
    assert torch.allclose(adv.double(), expected, atol=1e-6)
    assert torch.equal(adv, ret)
    assert torch.all(adv[MASK == 0] == 0)


def test_gigpo_mean_std_norm_hand_computed():
    adv, _ = compute_gigpo_advantage(outcome_rewards(), MASK, INDEX, cfg(gigpo={"mode": "mean_std_norm"}),
                                     turn_anchors=ANCHORS)
    s = math.sqrt(1 / 3)  # unbiased std of [1, 0, 1]
    ae_hi, ae_lo = (1 / 3) / (s + 1e-6), (-2 / 3) / (s + 1e-6)
    s1 = 0.25 / (0.25 + 1e-6)  # s0 group [.25, 0, .5]: std .25
    s2 = 0.25 / (math.sqrt(0.125) + 1e-6)  # s1 group [.5, 0]: std sqrt(.125)
    expected = spread([
        [ae_hi, ae_hi + s2, ae_hi],
        [ae_lo - s1, ae_lo - s2],
        [ae_hi + s1, ae_hi],
        [0.5 / (1 + 1e-6)],  # a group of one: mean 0, std 1
        [],
    ])
    assert torch.allclose(adv.double(), expected, atol=1e-5)


def test_gigpo_step_weight_and_episode_rewards_kwarg():
    adv, _ = compute_gigpo_advantage(outcome_rewards(), MASK, INDEX, cfg(gigpo={"step_advantage_w": 0.0}),
                                     turn_anchors=ANCHORS, episode_rewards=[3.0, 0.0, 0.0, 1.0, 0.0])
    # w=0 leaves only A_E, now computed from episode_rewards: group a mean 1 -> [2,-1,-1]; b -> 1
    assert torch.allclose(adv.double(), spread([[2.0] * 3, [-1.0] * 2, [-1.0] * 2, [1.0], []]), atol=1e-6)


def test_gigpo_all_equal_group_gives_zero():
    mask = MASK[:3]
    rewards = torch.zeros(mask.shape)
    rewards[0, 6], rewards[1, 3], rewards[2, 4] = 1.0, 1.0, 1.0
    anchors = np.array([["x", "y", "z"], ["x", "z"], ["x", "y"]] + [None], dtype=object)[:-1]
    for mode in ("mean_norm", "mean_std_norm"):
        adv, _ = compute_gigpo_advantage(rewards, mask, INDEX[:3], cfg(gamma=1.0, gigpo={"mode": mode}),
                                         turn_anchors=anchors)
        assert torch.allclose(adv, torch.zeros_like(adv), atol=1e-5)


def test_spa_critic_free_hand_computed():
    r = torch.zeros(MASK.shape)
    # per-turn rewards on the last token of each turn
    r[0, 1], r[0, 4], r[0, 6] = 0.2, 0.5, 1.0
    r[1, 0], r[1, 3] = 0.1, -0.1
    r[2, 2], r[2, 4] = 0.3, 0.6
    r[3, 1] = 0.7
    adv, ret = compute_spa_advantage(r, MASK, INDEX, cfg(), episode_rewards=[1.0, 0.0, 1.0, 1.0, 0.0])
    m = 2.6 / 7  # mean over all 7 turns of group a
    expected = spread([
        [1 / 3 + 0.2 - m, 1 / 3 + 0.5 - m, 1 / 3 + 1.0 - m],
        [-2 / 3 + 0.1 - m, -2 / 3 - 0.1 - m],
        [1 / 3 + 0.3 - m, 1 / 3 + 0.6 - m],
        [1.0 + 0.7],  # group of one: A_E = 1 - 0; its single turn: mean 0 -> 0.7
        [],
    ])
    assert torch.allclose(adv.double(), expected, atol=1e-6)
    assert torch.equal(adv, ret)


def test_spa_turn_gae_with_values_hand_computed():
    mask = torch.tensor([[1, 1, 0, 1, 0, 1]])
    r = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 9.0, 9.0, 1.0, 9.0, 0.25]])  # V read at each turn's first token: .5, 1, .25
    adv, ret = compute_spa_advantage(r, mask, None, cfg(gamma=0.9, lam=0.8), values=values)
    # deltas: 1 + .9*1 - .5 = 1.4 ; 0 + .9*.25 - 1 = -.775 ; 2 - .25 = 1.75 ; (gamma lam) = .72
    a2 = 1.75
    a1 = -0.775 + 0.72 * a2
    a0 = 1.4 + 0.72 * a1
    assert torch.allclose(ret, torch.tensor([[a0 + 0.5, a0 + 0.5, 0.0, a1 + 1.0, 0.0, a2 + 0.25]]), atol=1e-5)
    raw = np.array([a0, a0, a1, a2])
    whitened = (raw - raw.mean()) / math.sqrt(raw.var(ddof=1) + 1e-8)
    assert torch.allclose(adv[mask.bool()].double(), torch.tensor(whitened), atol=1e-5)
    assert torch.all(adv[mask == 0] == 0)


def test_spa_turn_gae_with_bf16_values_computes_and_returns_fp32():
    """Under mixed precision the critic's values are bf16: the advantages and returns stay fp32 (verl's gae
    promotes too), so value targets near 8-10 are not rounded to multiples of 0.0625."""
    mask = torch.tensor([[1, 1, 0, 1, 0, 1]])
    r = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 9.3]])
    values = torch.tensor([[8.0, 9.0, 9.0, 8.5, 9.0, 8.75]], dtype=torch.bfloat16)  # exact in bf16
    adv, ret = compute_spa_advantage(r, mask, None, cfg(gamma=0.9, lam=0.8), values=values)
    assert adv.dtype == ret.dtype == torch.float32
    # deltas: .9 * 8.5 - 8 = -.35 ; .9 * 8.75 - 8.5 = -.625 ; 9.3 - 8.75 = .55 ; (gamma lam) = .72
    a2 = 0.55
    a1 = -0.625 + 0.72 * a2
    a0 = -0.35 + 0.72 * a1
    want = torch.tensor([[a0 + 8.0, a0 + 8.0, 0.0, a1 + 8.5, 0.0, a2 + 8.75]])
    assert torch.allclose(ret, want, atol=1e-5)  # bf16 would round 9.3 to 9.3125
    raw = np.array([a0, a0, a1, a2])
    whitened = (raw - raw.mean()) / math.sqrt(raw.var(ddof=1) + 1e-8)
    assert torch.allclose(adv[mask.bool()].double(), torch.tensor(whitened), atol=1e-5)


def test_inputs_arrive_through_the_context():
    with estimator_inputs(turn_anchors=ANCHORS):
        adv, _ = compute_gigpo_advantage(outcome_rewards(), MASK, INDEX, cfg())
    direct, _ = compute_gigpo_advantage(outcome_rewards(), MASK, INDEX, cfg(), turn_anchors=ANCHORS)
    assert torch.equal(adv, direct)


def test_missing_inputs_and_bad_values_raise_clearly():
    with pytest.raises(ValueError, match="turn_anchors"):
        compute_gigpo_advantage(outcome_rewards(), MASK, INDEX, cfg())
    with pytest.raises(ValueError, match="uid index"):
        compute_spa_advantage(outcome_rewards(), MASK, None, cfg())
    with pytest.raises(ValueError, match="one anchor per turn"):
        short = np.array([["s0"], ["s0", "s1"], ["s0", "s3"], ["t0"], []] + [None], dtype=object)[:-1]
        compute_gigpo_advantage(outcome_rewards(), MASK, INDEX, cfg(), turn_anchors=short)
    bad = outcome_rewards()
    bad[0, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        compute_spa_advantage(bad, MASK, INDEX, cfg())
    with pytest.raises(ValueError, match="mode"):
        compute_gigpo_advantage(outcome_rewards(), MASK, INDEX, cfg(gigpo={"mode": "median"}), turn_anchors=ANCHORS)


# ------------------------------------------------------------------ rloo and the row mask (failed / padding rows)

# uid g: row 0 two turns (r 1.0, 0.0), row 1 one turn (0.5), row 2 one turn (2.0); uid s: row 3 alone (0.7)
RLOO_MASK = torch.tensor([[1, 0, 1], [1, 1, 0], [1, 0, 0], [1, 0, 0]])
RLOO_INDEX = np.array(["g", "g", "g", "s"], dtype=object)
RLOO_EPISODE = [1.0, 0.0, 0.5, 2.0]


def rloo_rewards():
    r = torch.zeros(RLOO_MASK.shape)
    r[0, 0], r[0, 2], r[1, 1], r[2, 0], r[3, 0] = 1.0, 0.0, 0.5, 2.0, 0.7
    return r


def rloo_spread(rows):
    out = torch.zeros(RLOO_MASK.shape, dtype=torch.float64)
    slots = [[0, 2], [0], [0], [0]]  # first token of each turn (a turn here is one token, or tokens 0-1 in row 1)
    for b, vals in enumerate(rows):
        for k, v in enumerate(vals):
            out[b, slots[b][k]] = v
    out[1, 1] = out[1, 0]  # row 1's turn spans tokens 0-1
    return out


def test_spa_rloo_hand_computed():
    adv, _ = compute_spa_advantage(rloo_rewards(), RLOO_MASK, RLOO_INDEX, cfg(spa={"mode": "rloo"}),
                                   episode_rewards=RLOO_EPISODE)
    # A_E: each R minus the mean of the other episodes of its group: 1 - .25, 0 - .75, .5 - .5; a group of one: 0
    # A_S over the 4 turns of g (sum 3.5): r - (3.5 - r) / 3; the single turn of s: 0
    a_s = [1 - 2.5 / 3, 0 - 3.5 / 3, 0.5 - 3.0 / 3, 2.0 - 1.5 / 3]
    expected = rloo_spread([[0.75 + a_s[0], 0.75 + a_s[1]], [-0.75 + a_s[2]], [0.0 + a_s[3]], [0.0]])
    assert torch.allclose(adv.double(), expected, atol=1e-6)


def test_spa_rloo_excludes_failed_rows():
    keep = np.array([True, False, True, True])  # row 1 ended by env failure
    adv, _ = compute_spa_advantage(rloo_rewards(), RLOO_MASK, RLOO_INDEX, cfg(spa={"mode": "rloo"}),
                                   episode_rewards=RLOO_EPISODE, row_mask=keep)
    # g without row 1: A_E 1 - .5, .5 - 1; turns [1, 0, 2] (sum 3): 1 - 1, 0 - 1.5, 2 - .5
    expected = rloo_spread([[0.5 + 0.0, 0.5 - 1.5], [0.0], [-0.5 + 1.5], [0.0]])
    assert torch.allclose(adv.double(), expected, atol=1e-6)
    assert torch.all(adv[1] == 0)


def test_rloo_group_of_one_and_of_two():
    from spa_reward.advantage import group_normalize

    x = torch.tensor([3.0, 1.0, 5.0])
    out = group_normalize(x, torch.tensor([0, 1, 1]), 2, "rloo", singleton_zero=False)
    assert torch.allclose(out, torch.tensor([0.0, -4.0, 4.0], dtype=torch.float64))  # 1 - 5, 5 - 1
    gone = group_normalize(x, torch.tensor([0, 1, 1]), 2, "rloo", singleton_zero=False,
                           include=torch.tensor([True, True, False]))
    assert torch.allclose(gone, torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64))  # 1 is now alone


DROP = [0, 2, 3, 4]  # MASK/INDEX rows without row 1


@pytest.mark.parametrize("mode", ["mean_norm", "mean_std_norm", "rloo"])
@pytest.mark.parametrize("estimator", ["gigpo", "spa", "spa_critic"])
def test_masked_row_is_as_if_absent(estimator, mode):
    """A row_mask=False row (env failure, padding) gets 0 and the others get exactly what they get without it."""
    r = outcome_rewards()
    r[1, 3] = 5.0  # a large reward on the masked row: it would move every statistic of group a
    episode = r.sum(-1).numpy()
    values = torch.linspace(-1, 1, MASK.numel()).reshape(MASK.shape)
    keep = np.ones(len(INDEX), dtype=bool)
    keep[1] = False

    def run(rows, row_mask=None):
        c = cfg(**{"gigpo" if estimator == "gigpo" else "spa": {"mode": mode}})
        kw = {"row_mask": row_mask} if row_mask is not None else {}
        if estimator == "gigpo":
            return compute_gigpo_advantage(r[rows], MASK[rows], INDEX[rows], c, turn_anchors=ANCHORS[rows],
                                           episode_rewards=episode[rows], **kw)
        if estimator == "spa":
            return compute_spa_advantage(r[rows], MASK[rows], INDEX[rows], c, episode_rewards=episode[rows], **kw)
        return compute_spa_advantage(r[rows], MASK[rows], INDEX[rows], c, values=values[rows], **kw)

    masked, _ = run(list(range(len(INDEX))), keep)
    absent, _ = run(DROP)
    assert torch.all(masked[1] == 0)
    assert torch.allclose(masked[DROP], absent, atol=1e-6)
    full, _ = run(list(range(len(INDEX))))
    assert not torch.allclose(full[DROP], absent, atol=1e-3)  # the mask matters: row 1 did move the others


def test_row_mask_shape_is_checked():
    with pytest.raises(ValueError, match="row_mask"):
        compute_spa_advantage(outcome_rewards(), MASK, INDEX, cfg(), row_mask=[True, False])


# ------------------------------------------------------------------ layouts: one packed row vs per-step rows (issue 12)


def two_layouts(seed: int, failed_episode: int | None = None):
    """Random episodes (uid groups, turns of 1-3 tokens, observation gaps, per-turn rewards, anchors, values) as
    packed rows and as shuffled per-step rows (TransferQueue keys {uid}_{session}_{index}: sessions/step_index)."""
    rng = np.random.default_rng(seed)
    eps = []
    for g in range(2):
        for e in range(int(rng.integers(2, 4))):
            t = int(rng.integers(1, 5))
            eps.append({"uid": f"g{g}", "lens": rng.integers(1, 4, t).tolist(), "gaps": rng.integers(1, 3, t).tolist(),
                        "r": rng.normal(size=t).round(2).tolist(), "v": rng.normal(size=t).round(2).tolist(),
                        "anchors": [f"s{a}" for a in rng.integers(0, 3, t)], "R": float(rng.integers(0, 2))})
    length = max(sum(e["lens"]) + sum(e["gaps"]) for e in eps)
    packed = {k: torch.zeros(len(eps), length) for k in ("mask", "r", "v")}
    firsts = []
    for b, e in enumerate(eps):
        pos, row_first = 0, []
        for n, gap, r, v in zip(e["lens"], e["gaps"], e["r"], e["v"]):
            packed["mask"][b, pos:pos + n] = 1
            packed["r"][b, pos + n - 1] = r
            packed["v"][b, pos] = v
            packed["v"][b, pos + n:pos + n + gap] = 9.0  # values off the turn's first token are never read
            row_first.append(pos)
            pos += n + gap
        firsts.append(row_first)
    width = max(max(e["lens"]) for e in eps)
    steps = [(b, t) for b, e in enumerate(eps) for t in range(len(e["lens"]))]
    steps = [steps[i] for i in rng.permutation(len(steps))]  # arrival order is not step order
    split = {k: torch.zeros(len(steps), width) for k in ("mask", "r", "v")}
    for i, (b, t) in enumerate(steps):
        n = eps[b]["lens"][t]
        split["mask"][i, :n] = 1
        split["r"][i, n - 1] = eps[b]["r"][t]
        split["v"][i, 0] = eps[b]["v"][t]
    keep_packed = np.array([b != failed_episode for b in range(len(eps))])
    packed_kw = {"index": np.array([e["uid"] for e in eps], dtype=object),
                 "turn_anchors": np.array([e["anchors"] for e in eps] + [None], dtype=object)[:-1],
                 "episode_rewards": [e["R"] for e in eps], "row_mask": keep_packed}
    split_kw = {"index": np.array([eps[b]["uid"] for b, _ in steps], dtype=object),
                "turn_anchors": np.array([[eps[b]["anchors"][t]] for b, t in steps] + [None], dtype=object)[:-1],
                "episode_rewards": [eps[b]["R"] for b, _ in steps], "row_mask": keep_packed[[b for b, _ in steps]],
                "sessions": [f"{eps[b]['uid']}_{b}" for b, _ in steps], "step_index": [t for _, t in steps]}
    return eps, packed, packed_kw, firsts, steps, split, split_kw


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("estimator,mode", [("gigpo", "mean_norm"), ("gigpo", "mean_std_norm"), ("spa", "mean_norm"),
                                            ("spa", "rloo"), ("spa", "mean_std_norm"), ("spa_critic", "")])
def test_packed_and_per_step_rows_give_equal_advantages(seed, estimator, mode):
    eps, packed, pkw, firsts, steps, split, skw = two_layouts(seed, failed_episode=seed % 3)
    c = cfg(gamma=0.9, lam=0.8, **({"gigpo" if estimator == "gigpo" else "spa": {"mode": mode}} if mode else {}))

    def run(t, kw):
        kw = dict(kw)
        index = kw.pop("index")
        if estimator == "gigpo":
            return compute_gigpo_advantage(t["r"], t["mask"], index, c, **kw)[0]
        if estimator == "spa":
            return compute_spa_advantage(t["r"], t["mask"], index, c, **kw)[0]
        return compute_spa_advantage(t["r"], t["mask"], index, c, values=t["v"], **kw)[0]

    a_packed, a_split = run(packed, pkw), run(split, skw)
    for i, (b, t) in enumerate(steps):
        n = eps[b]["lens"][t]
        got = a_split[i, :n]
        assert torch.allclose(got, torch.full_like(got, float(a_packed[b, firsts[b][t]])), atol=1e-5), (b, t)
        assert torch.all(a_split[i, n:] == 0)
    assert a_packed.abs().sum() > 0  # the comparison is not between two zero tensors


def test_sessions_need_a_step_index():
    with pytest.raises(ValueError, match="step_index"):
        compute_spa_advantage(outcome_rewards(), MASK, INDEX, cfg(), sessions=list("abcde"))
