"""Trajectory record format: validation (property-based), jsonl/parquet round trips, sharded writers."""

from __future__ import annotations

import copy
import json
import math
import multiprocessing as mp

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spa_reward.records import (
    CONTRIBUTIONS_KEY,
    RecordError,
    RecordWriter,
    TrajectoryRecord,
    expand_paths,
    iter_records,
    read_records,
    shard_path,
    validate_record,
    write_records,
)

ids_st = st.integers(min_value=0, max_value=200_000)
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)


@st.composite
def valid_records(draw) -> dict:
    prompt = draw(st.lists(ids_st, max_size=6))
    ids = list(prompt)
    spans = []
    for t in range(draw(st.integers(1, 5))):
        ids += draw(st.lists(ids_st, max_size=3))  # observation tokens (may be none)
        start = len(ids)
        ids += draw(st.lists(ids_st, min_size=1, max_size=4))
        spans.append([start, len(ids)])
    ids += draw(st.lists(ids_st, max_size=3))
    n = len(spans)
    d = {
        "format_version": 1,
        "uid": draw(st.text(min_size=1, max_size=10)),
        "episode_id": draw(st.text(min_size=1, max_size=10)),
        "env_name": draw(st.text(max_size=10)),
        "task_id": draw(st.text(max_size=10)),
        "tokenizer": draw(st.text(min_size=1, max_size=10)),
        "input_ids": ids,
        "prompt_length": len(prompt),
        "turn_spans": spans,
        "executable": draw(st.lists(st.booleans(), min_size=n, max_size=n)),
        "reward": draw(st.floats(allow_nan=False, allow_infinity=False)),
        "won": draw(st.booleans()),
    }
    if draw(st.booleans()):
        d["actions"] = draw(st.lists(st.text(max_size=12), min_size=n, max_size=n))
    if draw(st.booleans()):
        d["messages"] = [{"role": r, "content": c} for r, c in draw(st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), st.text(max_size=12)), max_size=4))]
    if draw(st.booleans()):
        d["truncated"] = draw(st.booleans())
    if draw(st.booleans()):
        extra = draw(st.dictionaries(st.text(max_size=5).filter(lambda k: k != CONTRIBUTIONS_KEY), json_value, max_size=3))
        if draw(st.booleans()):
            extra[CONTRIBUTIONS_KEY] = draw(st.lists(st.floats(-5, 5), min_size=n, max_size=n))
        d["extra"] = extra
    return d


# each corruption: (name, function(dict) -> dict or None when not applicable, text the error must contain)
def _set(key, value):
    def f(d):
        d[key] = value
        return d

    return f


def _drop(key):
    def f(d):
        del d[key]
        return d

    return f


def _span(fn):
    def f(d):
        return fn(d)

    return f


def _overlap(d):
    if len(d["turn_spans"]) < 2:
        return None
    d["turn_spans"][1][0] = d["turn_spans"][0][1] - 1
    return d


def _unsorted(d):
    if len(d["turn_spans"]) < 2:
        return None
    d["turn_spans"][0], d["turn_spans"][1] = d["turn_spans"][1], d["turn_spans"][0]
    return d


def _empty_turn(d):
    s = d["turn_spans"][-1]
    d["turn_spans"][-1] = [s[0], s[0]]
    return d


def _span_past_end(d):
    d["turn_spans"][-1][1] = len(d["input_ids"]) + 1
    return d


def _span_in_prompt(d):
    if d["prompt_length"] == 0:
        return None
    d["turn_spans"][0][0] = d["prompt_length"] - 1
    return d


def _not_pair(d):
    d["turn_spans"][0] = d["turn_spans"][0] + [99]
    return d


def _exec_len(d):
    d["executable"] = d["executable"] + [True]
    return d


def _actions_len(d):
    d["actions"] = ["a"] * (len(d["turn_spans"]) + 1)
    return d


def _contrib_len(d):
    d["extra"] = {CONTRIBUTIONS_KEY: [0.0] * (len(d["turn_spans"]) + 1)}
    return d


CORRUPTIONS = [
    ("version 2", _set("format_version", 2), "format_version"),
    ("version str", _set("format_version", "1"), "format_version"),
    ("missing uid", _drop("uid"), "uid"),
    ("missing reward", _drop("reward"), "reward"),
    ("unknown field", _set("contributions", [1.0]), "unknown field"),
    ("empty uid", _set("uid", ""), "uid"),
    ("uid int", _set("uid", 3), "uid"),
    ("task_id int", _set("task_id", 3), "task_id"),
    ("empty tokenizer", _set("tokenizer", ""), "tokenizer"),
    ("empty input_ids", _set("input_ids", []), "input_ids"),
    ("negative token", lambda d: {**d, "input_ids": [-1] + d["input_ids"][1:]}, "input_ids[0]"),
    ("float token", lambda d: {**d, "input_ids": [1.5] + d["input_ids"][1:]}, "input_ids[0]"),
    ("bool token", lambda d: {**d, "input_ids": [True] + d["input_ids"][1:]}, "input_ids[0]"),
    ("input_ids str", _set("input_ids", "123"), "input_ids"),
    ("prompt too long", lambda d: {**d, "prompt_length": len(d["input_ids"]) + 1}, "prompt_length"),
    ("prompt negative", _set("prompt_length", -1), "prompt_length"),
    ("no turns", lambda d: {**d, "turn_spans": [], "executable": []}, "turn_spans"),
    ("empty turn", _empty_turn, "turn_spans"),
    ("span past end", _span_past_end, "turn_spans"),
    ("span in prompt", _span_in_prompt, "turn_spans[0]"),
    ("overlap", _overlap, "turn_spans[1]"),
    ("unsorted", _unsorted, "turn_spans"),
    ("not a pair", _not_pair, "turn_spans[0]"),
    ("executable length", _exec_len, "executable"),
    ("executable int", lambda d: {**d, "executable": [1] * len(d["turn_spans"])}, "executable[0]"),
    ("reward nan", _set("reward", float("nan")), "reward"),
    ("reward inf", _set("reward", float("inf")), "reward"),
    ("reward -inf", _set("reward", -math.inf), "reward"),
    ("reward str", _set("reward", "1.0"), "reward"),
    ("reward bool", _set("reward", True), "reward"),
    ("won int", _set("won", 1), "won"),
    ("actions length", _actions_len, "actions"),
    ("actions not str", lambda d: {**d, "actions": [1] * len(d["turn_spans"])}, "actions[0]"),
    ("messages not dicts", _set("messages", ["hi"]), "messages[0]"),
    ("extra list", _set("extra", [1]), "extra"),
    ("extra nan", _set("extra", {"x": float("nan")}), "extra"),
    ("extra int key", _set("extra", {"x": {1: 2}}), "extra"),
    ("contributions length", _contrib_len, "contributions"),
    ("truncated str", _set("truncated", "no"), "truncated"),
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(d=valid_records())
def test_valid_records_pass_and_round_trip(d, tmp_path_factory):
    rec = validate_record(d)
    assert isinstance(rec, TrajectoryRecord)
    assert rec.to_dict() == {k: v for k, v in d.items()}
    assert validate_record(rec) == rec
    assert rec.turn_ends == [e - 1 for _, e in d["turn_spans"]]
    tmp = tmp_path_factory.mktemp("rt")
    for name in ("a.jsonl", "a.parquet"):
        path = tmp / name
        write_records(path, [rec, d])
        back = read_records(path)
        assert back == [rec, rec], name


@settings(max_examples=150, deadline=None)
@given(d=valid_records(), corruption=st.sampled_from(CORRUPTIONS))
def test_each_corruption_is_rejected_with_the_field_named(d, corruption):
    name, fn, expected = corruption
    bad = fn(copy.deepcopy(d))
    if bad is None:  # corruption not applicable to this record (e.g. needs two turns)
        return
    with pytest.raises(RecordError) as err:
        validate_record(bad)
    assert expected in str(err.value), (name, str(err.value))


def test_error_message_shows_the_bad_value():
    d = {
        "format_version": 1, "uid": "u", "episode_id": "e", "env_name": "x", "task_id": "t", "tokenizer": "tok",
        "input_ids": [1, 2, 3, 4], "prompt_length": 1, "turn_spans": [[1, 3], [2, 4]], "executable": [True, False],
        "reward": 1.0, "won": True,
    }
    with pytest.raises(RecordError, match=r"turn_spans\[1\].*overlaps.*\[2, 4\]"):
        validate_record(d)
    d["turn_spans"] = [[1, 3], [3, 4]]
    d["reward"] = float("nan")
    with pytest.raises(RecordError, match=r"'reward'.*finite.*nan"):
        validate_record(d)


def test_numpy_values_are_accepted_and_converted():
    np = pytest.importorskip("numpy")
    d = {
        "format_version": 1, "uid": "u", "episode_id": "e", "env_name": "x", "task_id": "t", "tokenizer": "tok",
        "input_ids": np.array([5, 6, 7], dtype=np.int64), "prompt_length": np.int64(1),
        "turn_spans": np.array([[1, 3]]), "executable": np.array([True]), "reward": np.float32(0.5), "won": np.bool_(True),
    }
    rec = validate_record(d)
    assert rec.input_ids == [5, 6, 7] and type(rec.input_ids[0]) is int
    assert rec.turn_spans == [[1, 3]] and rec.executable == [True] and rec.reward == 0.5 and rec.won is True
    json.dumps(rec.to_dict())


def test_jsonl_appends_and_reader_reports_location(tmp_path):
    import random

    from progress_helpers import random_record

    rng = random.Random(0)
    path = tmp_path / "r.jsonl"
    with RecordWriter(path) as w:
        w.write(random_record(rng, 0))
    with RecordWriter(path) as w:  # a second writer appends
        w.write(random_record(rng, 1))
    assert [r.episode_id for r in read_records(path)] == ["e0", "e1"]
    with open(path, "a") as f:
        f.write('{"format_version": 1, "uid": "x"')  # a half-written last line (writer crashed)
    with pytest.raises(RecordError, match=r"r\.jsonl:line 3"):
        read_records(path)
    with pytest.warns(UserWarning, match="line 3"):
        assert len(read_records(path, skip_invalid=True)) == 2


def test_unknown_suffix_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="suffix"):
        RecordWriter(tmp_path / "x.csv")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_records(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match="no trajectory record files"):
        read_records(str(tmp_path / "*.jsonl"))


def _writer_process(directory: str, worker: int, n: int) -> None:
    import random

    from progress_helpers import random_record

    rng = random.Random(worker)
    with RecordWriter(shard_path(directory, prefix=f"w{worker}")) as w:
        for i in range(n):
            w.write(random_record(rng, worker * 1000 + i))


def test_sharded_writers_in_parallel_processes(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer_process, args=(str(tmp_path), k, 25)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    files = expand_paths(tmp_path)
    assert len(files) == 3 and len({f.name for f in files}) == 3
    recs = list(iter_records(str(tmp_path / "*.jsonl")))
    assert len(recs) == 75 and len({r.episode_id for r in recs}) == 75


def test_parquet_write_is_atomic_and_replaces(tmp_path):
    import random

    from progress_helpers import random_record

    rng = random.Random(1)
    path = tmp_path / "r.parquet"
    write_records(path, [random_record(rng, i) for i in range(5)])
    write_records(path, [random_record(rng, i) for i in range(3)])
    assert len(read_records(path)) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["r.parquet"]  # no temporary files left behind


def test_line_torn_inside_a_multibyte_character_is_one_bad_record(tmp_path):
    import random

    from progress_helpers import random_record

    rng = random.Random(2)
    recs = [random_record(rng, i) for i in range(3)]
    recs[1]["actions"] = ["caf\u00e9 \u2014 \u00fcber"] + recs[1]["actions"][1:]
    path = tmp_path / "torn.jsonl"
    write_records(path, recs[:1])
    line = (json.dumps(recs[1], ensure_ascii=False) + "\n").encode("utf-8")
    cut = line.index("\u00e9".encode("utf-8")) + 1  # inside the two-byte character
    with open(path, "ab") as f:
        f.write(line[:cut] + b"\n")  # a kill mid-write, then the next writer appends after it
    write_records(path, recs[2:])
    with pytest.raises(RecordError, match=r"torn\.jsonl:line 2: invalid UTF-8"):
        read_records(path)
    with pytest.warns(UserWarning, match=r"torn\.jsonl:line 2: invalid UTF-8"):
        assert [r.episode_id for r in read_records(path, skip_invalid=True)] == ["e0", "e2"]


def test_parquet_writer_that_fails_midway_keeps_the_old_file(tmp_path):
    import random

    from progress_helpers import random_record

    rng = random.Random(3)
    path = tmp_path / "r.parquet"
    write_records(path, [random_record(rng, i) for i in range(4)])
    with pytest.raises(RuntimeError, match="collector died"):
        with RecordWriter(path) as w:
            w.write(random_record(rng, 10))
            raise RuntimeError("collector died")
    bad = random_record(rng, 11)
    bad["reward"] = float("nan")
    with pytest.raises(RecordError):
        write_records(path, [random_record(rng, 12), bad])  # an invalid record mid-way
    assert [r.episode_id for r in read_records(path)] == ["e0", "e1", "e2", "e3"]
    assert [p.name for p in tmp_path.iterdir()] == ["r.parquet"]
    with pytest.raises(RuntimeError):
        with RecordWriter(tmp_path / "new.parquet") as w:
            w.write(random_record(rng, 13))
            raise RuntimeError("stop")
    assert not (tmp_path / "new.parquet").exists()


def test_layout_and_prompt_pieces_are_checked_and_old_records_still_load(tmp_path):
    import random

    from progress_helpers import random_record

    from spa_reward.records import PIECES_KEY, prompt_pieces, record_layout

    rec = random_record(random.Random(9), 0, n_turns=2)
    old = validate_record(rec)  # no extra at all: a format-1 record from before the pieces were kept
    write_records(tmp_path / "old.jsonl", [old])
    (back,) = read_records(tmp_path / "old.jsonl")
    assert record_layout(back) == "full"
    with pytest.raises(RecordError, match="no extra\\['prompt_pieces'\\].*Use it in the full layout"):
        prompt_pieces(back)
    with pytest.raises(RecordError, match="extra\\['layout'\\].*must be one of \\('full', 'window'\\)"):
        validate_record({**rec, "extra": {"layout": "windowed"}})
    pieces = {"version": 1, "observations": ["o0", "o1"], "infos": [{"goal": "g"}, {}], "style": "react"}
    good = validate_record({**rec, "extra": {"layout": "window", PIECES_KEY: pieces}})
    assert record_layout(good) == "window" and prompt_pieces(good)["observations"] == ["o0", "o1"]
    for bad, match in (({**pieces, "observations": ["o0"]}, "observations.*>= 2 str"),
                       ({**pieces, "infos": [{}]}, "infos.*list of 2 dicts"),
                       ({**pieces, "version": 7}, "version.*knows 1"),
                       ({**pieces, "history_shown": [0]}, "history_shown.*list of 2 ints")):
        with pytest.raises(RecordError, match=match):
            prompt_pieces(validate_record({**rec, "extra": {PIECES_KEY: bad}}))
    with pytest.raises(RecordError, match="actions.*required"):
        prompt_pieces(validate_record({**{k: v for k, v in rec.items() if k != "actions"},
                                       "extra": {PIECES_KEY: pieces}}))
