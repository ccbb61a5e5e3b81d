"""ProgressScorer, the named Ray actor, and the tokenizer compatibility check."""

from __future__ import annotations

import asyncio
import math
import random

import pytest
import torch
from progress_helpers import VOCAB, make_tiny_tokenizer, random_record

from spa_reward.progress.data import truncate_for_estimator
from spa_reward.progress.model import ProgressEstimator, predict_batched
from spa_reward.progress.serve import ProgressScorer, check_tokenizer_compatible, get_progress_scorer
from spa_reward.records import validate_record


def _items(n, seed=0):
    rng = random.Random(seed)
    recs = [validate_record(random_record(rng, i)) for i in range(n)]
    return recs, [{"input_ids": r.input_ids, "turn_ends": r.turn_ends, "prompt_length": r.prompt_length} for r in recs]


def test_scores_match_the_model_in_input_order(tiny_estimator_dir):
    scorer = ProgressScorer(tiny_estimator_dir, device="cpu", max_batch_size=3)
    recs, items = _items(10)
    out = scorer.score(items)
    assert [len(o) for o in out] == [r.num_turns for r in recs]
    model = ProgressEstimator.from_pretrained(tiny_estimator_dir)
    for r, o in zip(recs, out):
        assert o == pytest.approx(model.predict_turns(r.input_ids, r.turn_ends), abs=1e-5)
    assert scorer.score([]) == []
    assert scorer.score([{"input_ids": [1, 2], "turn_ends": []}]) == [[]]
    info = scorer.info()
    assert info["stats"]["items"] == 11 and info["max_length"] == 4096 and info["dtype"] == "torch.float32"


def test_truncation_matches_training(tiny_estimator_dir):
    scorer = ProgressScorer(tiny_estimator_dir, device="cpu", max_length=16)
    recs, items = _items(12, seed=1)
    out = scorer.score(items)
    truncs = [truncate_for_estimator(r.input_ids, r.turn_ends, 16, r.prompt_length) for r in recs]
    assert any(t.truncated for t in truncs)
    expected = predict_batched(scorer.model, [t.input_ids for t in truncs], [t.turn_ends for t in truncs])
    for r, t, o, e in zip(recs, truncs, out, expected):
        assert len(o) == r.num_turns
        for k in range(r.num_turns):
            if k in t.kept:
                assert o[k] == pytest.approx(e[t.kept.index(k)], abs=1e-5)
            else:
                assert o[k] == 0.0  # dropped by truncation: no contribution
    assert scorer.stats["truncated_items"] == sum(t.truncated for t in truncs)


def test_bad_items_are_rejected(tiny_estimator_dir):
    scorer = ProgressScorer(tiny_estimator_dir, device="cpu")
    with pytest.raises(ValueError, match="item 1 turn_ends"):
        scorer.score([{"input_ids": [1, 2, 3], "turn_ends": [2]}, {"input_ids": [1, 2], "turn_ends": [1, 1]}])
    with pytest.raises(ValueError, match="outside"):
        scorer.score([{"input_ids": [1, 2, 3], "turn_ends": [3]}])
    with pytest.raises(ValueError, match=f"token id {VOCAB + 5}.*check_tokenizer_compatible"):
        scorer.score([{"input_ids": [1, VOCAB + 5], "turn_ends": [1]}])
    with pytest.raises(ValueError, match="'input_ids' and 'turn_ends'"):
        scorer.score([{"ids": [1]}])
    with pytest.raises(TypeError, match="list of items"):
        scorer.score({"input_ids": [1], "turn_ends": [0]})


def test_non_finite_outputs_are_passed_through(tiny_estimator_dir):
    scorer = ProgressScorer(tiny_estimator_dir, device="cpu")
    with torch.no_grad():
        scorer.model.head[-1].bias.fill_(float("nan"))
    out = scorer.score([{"input_ids": [1, 2, 3], "turn_ends": [1, 2]}])
    assert len(out[0]) == 2 and all(math.isnan(x) for x in out[0])  # NaN reaches the caller: the reward layer handles it


def test_missing_checkpoint_names_the_path_and_how_to_train(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no-such-dir.*spa_reward\.progress\.train"):
        ProgressScorer(tmp_path / "no-such-dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty.*holds no progress estimator"):
        ProgressScorer(tmp_path / "empty")


def test_training_output_without_final_estimator_uses_latest(tmp_path, tiny_estimator_dir):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(tiny_estimator_dir, out / "checkpoint-7")
    (out / "checkpoint-7" / "trainer_state.pt").write_bytes(b"")
    (out / "latest").write_text("checkpoint-7")
    assert ProgressScorer(out, device="cpu").checkpoint_dir == out / "checkpoint-7"


def test_tokenizer_compatibility(tiny_estimator_dir, tiny_tokenizer, tmp_path):
    check_tokenizer_compatible(tiny_estimator_dir, tiny_tokenizer)  # same vocab: passes
    tiny_tokenizer.save_pretrained(tmp_path / "policy")
    check_tokenizer_compatible(tiny_estimator_dir, str(tmp_path / "policy"))  # by path too
    with pytest.raises(ValueError, match=r"tokenizer mismatch.*'w0': estimator 0, policy 1"):
        check_tokenizer_compatible(tiny_estimator_dir, make_tiny_tokenizer(shift=1))
    with pytest.raises(ValueError, match="tokenizer mismatch.*64 tokens.*74 tokens"):
        check_tokenizer_compatible(tiny_estimator_dir, make_tiny_tokenizer(n_words=72))


def test_tokenizer_check_without_recorded_tokenizer(tmp_path, tiny_tokenizer):
    from progress_helpers import tiny_config

    cfg = tiny_config()
    cfg.tokenizer = None
    ProgressEstimator(cfg).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="records no tokenizer"):
        check_tokenizer_compatible(tmp_path, tiny_tokenizer)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, namespace="spa-test", log_to_driver=False)
    yield ray
    ray.shutdown()


def test_named_ray_actor_is_shared_and_coalesces(ray_cluster, tiny_estimator_dir, tmp_path):
    ray = ray_cluster
    actor = get_progress_scorer(tiny_estimator_dir, name="scorer-test", num_cpus=0.5, max_batch_size=4)
    again = get_progress_scorer(tiny_estimator_dir, name="scorer-test", num_cpus=0.5)
    assert actor._actor_id == again._actor_id
    # another process of the job finds it by name
    assert ray.get_actor("scorer-test", namespace="spa-test")._actor_id == actor._actor_id

    _, items = _items(9, seed=2)
    reference = ProgressScorer(tiny_estimator_dir, device="cpu").score(items)

    async def many_callers():
        refs = [actor.score.remote(items[i : i + 3]) for i in range(0, 9, 3)] + [again.score.remote([])]
        return await asyncio.gather(*refs)

    results = asyncio.run(many_callers())
    assert results[-1] == []
    got = [x for chunk in results[:-1] for x in chunk]
    for a, b in zip(got, reference):
        assert a == pytest.approx(b, abs=1e-5)
    info = ray.get(actor.info.remote())
    assert info["stats"]["items"] == 9 and info["stats"]["calls"] <= 3

    # a bad request fails alone
    with pytest.raises(ValueError, match="strictly increasing"):
        ray.get(actor.score.remote([{"input_ids": [1, 2], "turn_ends": [1, 0]}]))
    assert ray.get(actor.score.remote(items[:1]))[0] == pytest.approx(reference[0], abs=1e-5)

    # the same name for a different checkpoint is an error, not a silent reuse
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_estimator_dir, other)
    with pytest.raises(ValueError, match="already serves"):
        get_progress_scorer(other, name="scorer-test")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_progress_scorer(tmp_path / "missing", name="scorer-missing")
    ray.kill(actor)


def test_actor_body_coalesces_concurrent_requests(tiny_estimator_dir):
    """Without Ray: requests queued while the event loop is busy share one forward pass (up to coalesce_items)."""
    from spa_reward.progress.serve import ProgressScorerActor

    body = ProgressScorerActor(str(tiny_estimator_dir), coalesce_items=6, device="cpu")
    _, items = _items(8, seed=3)
    reference = body.scorer.score(items)
    body.scorer.stats["calls"] = 0

    async def run():
        return await asyncio.gather(*(body.score([it]) for it in items))

    results = asyncio.run(run())
    for r, ref in zip(results, reference):
        assert r[0] == pytest.approx(ref, abs=1e-5)
    assert body.scorer.stats["calls"] == 2  # 8 single-item requests -> batches of 6 and 2
