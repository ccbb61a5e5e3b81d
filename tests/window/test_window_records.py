"""Trajectory records rebuild both layouts: episodes played by the real env_agent loop (toy env, fake LLM server) and
collected with env.collect_dir in either layout give, through spa_reward.progress.layouts, exactly the window rows
the window loop emitted and exactly the packed row the full-history loop emitted."""

from __future__ import annotations

import dataclasses
import random
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envs.actions import format_action
from spa_reward.progress.layouts import make_token_builder, packed_view, window_sequences
from spa_reward.records import PIECES_KEY, RecordError, prompt_pieces, read_records, record_layout
from tests.recipe.helpers import row
from tests.window.layouts import play, toy_env_cfg


def policy(turn, prompt):  # an unparseable reply at turn 1: the history shows NO_ACTION there
    return "no idea" if turn == 1 else format_action("step forward", "forward " * (turn + 1), "react")


def collected(tokenizer, tmp_path, name: str, **env) -> tuple[list, list]:
    """(outputs, records) of one episode played with collection into ``tmp_path/name``."""
    folder = tmp_path / name
    outs = play(tokenizer, toy_env_cfg(collect_dir=str(folder), **env), policy, row("t3", uid="rec", session_id=2))
    return outs, read_records(folder)


@pytest.fixture
def builder(tokenizer):
    return make_token_builder(tokenizer, "qwen2")  # the builder tests/recipe/helpers.make_agent_loop gives the loop


def rows_of(outs) -> list[tuple[list, int]]:
    return [(list(o.prompt_ids) + list(o.response_ids), len(o.prompt_ids)) for o in outs]


def test_both_layouts_rebuild_from_either_record(tokenizer, toy_env, tmp_path, builder):
    packed_out, (packed_rec,) = collected(tokenizer, tmp_path, "full")
    window_outs, window_recs = collected(tokenizer, tmp_path, "window", history="window", history_length=2)
    assert len(window_outs) == 5 and len(window_recs) == 1  # one record per episode, not one per row
    (window_rec,) = window_recs
    assert record_layout(packed_rec) == "full" and record_layout(window_rec) == "window"

    # the window layout, from the record played in it and from the one played in the full layout
    emitted = rows_of(window_outs)
    for rec, k in ((window_rec, None), (packed_rec, 2)):
        rebuilt = window_sequences(rec, builder, history_length=k)
        assert [(r.input_ids, r.prompt_length) for r in rebuilt] == emitted
        assert [r.turn_end for r in rebuilt] == [len(ids) - 1 for ids, _ in emitted]
        assert [r.history_shown for r in rebuilt] == [o.extra_fields["env_episode"]["history_shown"]
                                                      for o in window_outs]
    # the window record's input_ids are the packed view: the full-history loop's own row, token for token
    assert window_rec.input_ids == list(packed_out.prompt_ids) + list(packed_out.response_ids)
    for field in ("prompt_length", "turn_spans", "executable", "actions", "reward", "won", "messages"):
        assert getattr(window_rec, field) == getattr(packed_rec, field), field
    view = packed_view("toy", prompt_pieces(packed_rec), [packed_rec.input_ids[a:b] for a, b in packed_rec.turn_spans],
                       builder)
    assert (view.input_ids, view.prompt_length, view.turn_spans) == (packed_rec.input_ids, packed_rec.prompt_length,
                                                                     packed_rec.turn_spans)
    # another window length from the same records: k=0 shows no pair, the prompts are the first step's form
    rows0 = window_sequences(window_rec, builder, history_length=0)
    assert all(r.history_shown == 0 for r in rows0) and "Your last" not in tokenizer.decode(rows0[-1].input_ids)


def test_rows_with_dropped_pairs_rebuild_exactly(tokenizer, toy_env, tmp_path, builder):
    env = {"history": "window", "history_length": 3, "max_steps": 6, "env_kwargs": {"obs_pad": 20}}
    sizes = [len(o.prompt_ids) for o in play(tokenizer, toy_env_cfg(**env), policy, row("t3"))]
    folder = tmp_path / "tight"
    outs = play(tokenizer, toy_env_cfg(collect_dir=str(folder), **env), policy, row("t3"), prompt_length=sizes[2] - 1)
    (rec,) = read_records(folder)
    shown = [o.extra_fields["env_episode"]["history_shown"] for o in outs]
    assert shown[2] < 2  # the loop dropped a pair to fit rollout.prompt_length
    rebuilt = window_sequences(rec, builder)
    assert [(r.input_ids, r.prompt_length) for r in rebuilt] == rows_of(outs)
    assert [r.history_shown for r in rebuilt] == shown


def test_records_without_pieces_or_with_another_builder_are_refused(tokenizer, toy_env, tmp_path, builder):
    _, (rec,) = collected(tokenizer, tmp_path, "w", history="window", history_length=2)
    old = dataclasses.replace(rec, extra={k: v for k, v in rec.extra.items() if k != PIECES_KEY})
    with pytest.raises(RecordError, match="no extra\\['prompt_pieces'\\].*full layout"):
        window_sequences(old, builder)
    other = make_token_builder(tokenizer, None)  # verl's default builder, not the Qwen one the loop used
    with pytest.raises(ValueError, match="was tokenised by .*--hf-model-type"):
        window_sequences(rec, other)
    full = dataclasses.replace(rec, extra={**rec.extra, "layout": "full", PIECES_KEY: {
        k: v for k, v in rec.extra[PIECES_KEY].items() if k not in ("history_length", "history_shown",
                                                                     "window_prompt_lengths")}})
    with pytest.raises(ValueError, match="collected in the full layout: pass the window's history_length"):
        window_sequences(full, builder)
    broken = dataclasses.replace(rec, extra={**rec.extra, PIECES_KEY: {**rec.extra[PIECES_KEY],
                                                                         "window_prompt_lengths": [1] * rec.num_turns}})
    with pytest.raises(ValueError, match="rebuilt window prompt of step 0"):
        window_sequences(broken, builder)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(k=st.integers(0, 3), per_turn=st.one_of(st.none(), st.integers(4, 40)), prompt_slack=st.integers(-30, 300),
       obs_pad=st.integers(0, 12), seed=st.integers(0, 999))
def test_any_window_episode_rebuilds_from_its_record(tokenizer, toy_env, builder, k, per_turn, prompt_slack, obs_pad,
                                                     seed):
    rng = random.Random(seed)
    replies = [rng.choice([format_action("step forward", "go " * rng.randint(0, 8), "react"),
                           format_action("wait", None, "react"), "junk " * rng.randint(1, 6)]) for _ in range(6)]
    env = {"history": "window", "history_length": k, "max_steps": 6, "max_tokens_per_turn": per_turn,
           "env_kwargs": {"obs_pad": obs_pad}}
    first = play(tokenizer, toy_env_cfg(**env), lambda t, p: replies[t], row("t4"))[0]
    folder = tempfile.mkdtemp(prefix="w12rec")
    try:
        outs = play(tokenizer, toy_env_cfg(collect_dir=folder, **env), lambda t, p: replies[t], row("t4"),
                    prompt_length=max(1, len(first.prompt_ids) + prompt_slack))
        records = read_records(folder) if outs[0].extra_fields["env_episode"]["episode_turns"] else []
    except FileNotFoundError:  # an episode without a step writes no record
        records = []
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    T = outs[0].extra_fields["env_episode"]["episode_turns"]
    assert len(records) == (1 if T else 0)
    if T:
        (rec,) = records
        assert [(r.input_ids, r.prompt_length) for r in window_sequences(rec, builder)] == rows_of(outs)
        assert rec.prompt_length == len(outs[0].prompt_ids) and rec.actions == [o.extra_fields["env_episode"][
            "actions"][0] for o in outs]


@pytest.mark.parametrize("bad", [-1, 10**9])
def test_packed_view_names_a_token_id_the_tokenizer_does_not_have(tokenizer, toy_env, tmp_path, builder, bad):
    """A reply token id outside the tokenizer (-1 from a padded array, or past its vocabulary) is a ValueError naming
    the turn, the position and the id, not an OverflowError from deep inside the tokenizer's decode."""
    _, (rec,) = collected(tokenizer, tmp_path, "full")
    replies = [list(rec.input_ids[a:b]) for a, b in rec.turn_spans]
    replies[0][1] = bad
    expected = rf"reply 0 has token id {bad} at position 1, outside the tokenizer's vocabulary of {len(tokenizer)} ids"
    with pytest.raises(ValueError, match=expected):
        packed_view("toy", prompt_pieces(rec), replies, builder)
