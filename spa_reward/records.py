"""Trajectory records: the on-disk exchange format between rollout collection and the progress estimator.

One record per episode. Format version 1, fields:

=================  ===========================  ======================================================
field              type                         meaning
=================  ===========================  ======================================================
format_version     int (== 1)                   version of this schema
uid                str, non-empty               GRPO group id (episodes of the same task/prompt share it)
episode_id         str, non-empty               unique id of this episode
env_name           str                          e.g. ``"alfworld"``, ``"webshop"``
task_id            str                          task/game id inside the environment
tokenizer          str, non-empty               name or path of the *policy* tokenizer that produced
                                                ``input_ids``
input_ids          list[int] (>= 0), non-empty  prompt + response tokens, the full sequence
prompt_length      int                          number of prompt tokens, ``0 <= prompt_length <= len``
turn_spans         list[[start, end)]           one span per assistant turn, in ``input_ids`` coordinates,
                                                non-empty, sorted, non-overlapping, each inside
                                                ``[prompt_length, len(input_ids)]``; ``end`` is exclusive,
                                                so the turn's last token is ``input_ids[end - 1]``
executable         list[bool]                   one per turn: did the env accept/execute the action
reward             float, finite                the env's final reward R of the episode
won                bool                         task success
messages           list[dict] | None            optional chat messages ``{"role": ..., "content": ...}``
actions            list[str] | None             optional, one parsed action text per turn
truncated          bool | None                  optional, episode cut by the step/length limit
extra              dict | None                  optional, JSON-serialisable free-form data.  The key
                                                ``extra["contributions"]`` (:data:`CONTRIBUTIONS_KEY`)
                                                holds per-turn c_t when a scorer has filled it in.
                                                ``extra["layout"]`` and ``extra["prompt_pieces"]``: see
                                                "Both layouts" below.
=================  ===========================  ======================================================

Both layouts (``env.history=full|window``). A record collected by the ``env_agent`` loop keeps, next to the
packed sequence, the raw pieces every prompt is built from, so one record gives either layout
(:mod:`spa_reward.progress.layouts`: ``window_sequences`` for the window layout's T rows, ``packed_view``)::

    extra["layout"]         "full" | "window": the layout the episode was played in (absent: "full")
    extra["prompt_pieces"]  {"version": 1,
                             "observations": [raw observation of step 0 (the reset), 1, ...]  (>= T entries),
                             "infos":        [envs.prompts.prompt_info(info of that step), ...] (same length;
                                              entry 0 is the reset info, which carries the goal),
                             "style", "one_shot", "system_prompt", "include_admissible": the prompt settings,
                             "token_builder": class of verl's continuous-token builder that tokenised it,
                             "chat_template_kwargs": the run's data.apply_chat_template_kwargs,
                             window layout only: "history_length" (k), "history_shown" (pairs in each step's
                             prompt, fewer where the loop dropped old pairs to fit rollout.prompt_length) and
                             "window_prompt_lengths" (tokens of each step's prompt, checked on rebuild)}

What ``input_ids`` holds: always the packed (full-history) view. A record played in the full layout holds the
loop's own row. A record played in the window layout holds the packed sequence rebuilt from its pieces and the
exact reply tokens with the run's token builder (what the full-history loop builds for the same replies, without
the response-length budget, so it may be longer than ``rollout.response_length``); its window rows are not
stored: ``window_sequences`` rebuilds them token for token (the recorded prompt lengths are checked). ``actions``
is required for the window rebuild (the history shows the parsed actions). Records written before the pieces were
kept still load; asking them for the window layout raises :class:`RecordError` saying so.

Files: ``.jsonl`` (one JSON object per line; append-friendly, use it while collecting) and ``.parquet``
(columnar; ``messages`` and ``extra`` are stored as JSON strings). The suffix picks the format.

Concurrency: give every writer process its own file (:func:`shard_path` makes a unique name). A
:class:`RecordWriter` on a ``.jsonl`` file appends one complete line per ``write`` with a single ``write(2)``
call on an ``O_APPEND`` descriptor and flushes it, so a crash loses at most the line being written and a
reader never sees a partial earlier record. ``.parquet`` files are written to a temporary name and renamed
into place atomically on a clean close, so readers never see half a file; a writer used as a context manager
whose block raises publishes nothing (the previous file stays).

Reading decodes UTF-8 line by line, so a line torn inside a multi-byte character (a kill or a full disk mid-write)
is one bad record, reported with its file and line (or skipped with ``skip_invalid``), not a failed read.
"""

from __future__ import annotations

import dataclasses
import glob as _glob
import json
import math
import numbers
import os
import socket
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
CONTRIBUTIONS_KEY = "contributions"
LAYOUT_KEY = "layout"
PIECES_KEY = "prompt_pieces"
PIECES_VERSION = 1
LAYOUTS = ("full", "window")  # env.history; see "Both layouts" in the module docstring
SUFFIXES = (".jsonl", ".parquet")

_REQUIRED = (
    "format_version",
    "uid",
    "episode_id",
    "env_name",
    "task_id",
    "tokenizer",
    "input_ids",
    "prompt_length",
    "turn_spans",
    "executable",
    "reward",
    "won",
)
_OPTIONAL = ("messages", "actions", "truncated", "extra")


class RecordError(ValueError):
    """A malformed trajectory record. The message names the field and the bad value."""


@dataclass
class TrajectoryRecord:
    """One episode; see the module docstring for the meaning of every field. Build it with
    :func:`validate_record` (or :meth:`from_dict`) to get the checks."""

    uid: str
    episode_id: str
    env_name: str
    task_id: str
    tokenizer: str
    input_ids: list[int]
    prompt_length: int
    turn_spans: list[list[int]]
    executable: list[bool]
    reward: float
    won: bool
    messages: list[dict] | None = None
    actions: list[str] | None = None
    truncated: bool | None = None
    extra: dict | None = None
    format_version: int = FORMAT_VERSION

    @property
    def num_turns(self) -> int:
        return len(self.turn_spans)

    @property
    def turn_ends(self) -> list[int]:
        """Index in ``input_ids`` of the last token of every assistant turn (``end - 1``)."""
        return [end - 1 for _, end in self.turn_spans]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable); optional fields that are ``None`` are left out."""
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items() if not (k in _OPTIONAL and v is None)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrajectoryRecord:
        return validate_record(d)


# --------------------------------------------------------------------------------------------------------------
# validation


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(name: str, value: Any, why: str) -> RecordError:
    return RecordError(f"trajectory record field {name!r}: {why} (got {_short(value)})")


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_str(d: Mapping, name: str, non_empty: bool = True) -> str:
    v = d[name]
    if not isinstance(v, str):
        raise _fail(name, v, f"must be a str, not {type(v).__name__}")
    if non_empty and not v:
        raise _fail(name, v, "must be a non-empty str")
    return v


def _check_bool(name: str, v: Any) -> bool:
    # numpy.bool_ is accepted (it is what pandas/pyarrow hand back), plain ints are not
    if isinstance(v, bool) or (type(v).__module__ == "numpy" and type(v).__name__ in ("bool", "bool_")):
        return bool(v)
    raise _fail(name, v, f"must be a bool, not {type(v).__name__}")


def _as_list(name: str, v: Any) -> list:
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):
        v = v.tolist()
    if isinstance(v, (str, bytes, Mapping)) or not isinstance(v, Sequence):
        raise _fail(name, v, f"must be a list, not {type(v).__name__}")
    return list(v)


def _check_int_list(name: str, v: Any) -> list[int]:
    out = _as_list(name, v)
    for i, x in enumerate(out):
        if not _is_int(x):
            raise _fail(f"{name}[{i}]", x, f"must be an int, not {type(x).__name__}")
    return [int(x) for x in out]


def _non_str_key(obj: Any) -> Any:
    """The first dict key that is not a str anywhere inside ``obj`` (JSON would silently turn it into one)."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, str):
                return k
            bad = _non_str_key(v)
            if bad is not None:
                return bad
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            bad = _non_str_key(v)
            if bad is not None:
                return bad
    return None


def validate_record(d: Mapping[str, Any] | TrajectoryRecord) -> TrajectoryRecord:
    """Check a record (a dict, e.g. one parsed JSON line, or a :class:`TrajectoryRecord`) and return it as a
    :class:`TrajectoryRecord` with plain Python types. Raises :class:`RecordError` (a ``ValueError``) naming
    the first bad field and its value."""
    if isinstance(d, TrajectoryRecord):
        d = dataclasses.asdict(d)
    if not isinstance(d, Mapping):
        raise RecordError(f"trajectory record must be a dict, not {type(d).__name__}")
    missing = [k for k in _REQUIRED if k not in d]
    if missing:
        raise RecordError(f"trajectory record is missing required field(s) {missing}")
    unknown = sorted(set(d) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise RecordError(
            f"trajectory record has unknown field(s) {unknown}; free-form data belongs in 'extra'"
        )

    version = d["format_version"]
    if not _is_int(version) or int(version) != FORMAT_VERSION:
        raise _fail("format_version", version, f"unsupported version, this reader knows only {FORMAT_VERSION}")

    uid = _check_str(d, "uid")
    episode_id = _check_str(d, "episode_id")
    env_name = _check_str(d, "env_name", non_empty=False)
    task_id = _check_str(d, "task_id", non_empty=False)
    tokenizer = _check_str(d, "tokenizer")

    input_ids = _check_int_list("input_ids", d["input_ids"])
    n = len(input_ids)
    if n == 0:
        raise _fail("input_ids", input_ids, "must not be empty")
    for i, x in enumerate(input_ids):
        if x < 0:
            raise _fail(f"input_ids[{i}]", x, "token ids must be >= 0")

    prompt_length = d["prompt_length"]
    if not _is_int(prompt_length):
        raise _fail("prompt_length", prompt_length, f"must be an int, not {type(prompt_length).__name__}")
    prompt_length = int(prompt_length)
    if not 0 <= prompt_length <= n:
        raise _fail("prompt_length", prompt_length, f"must lie in [0, len(input_ids)={n}]")

    raw_spans = _as_list("turn_spans", d["turn_spans"])
    if not raw_spans:
        raise _fail("turn_spans", raw_spans, "must hold at least one assistant turn")
    spans: list[list[int]] = []
    prev_end = prompt_length
    for t, span in enumerate(raw_spans):
        name = f"turn_spans[{t}]"
        pair = _check_int_list(name, _as_list(name, span))
        if len(pair) != 2:
            raise _fail(name, span, "must be a [start, end) pair")
        start, end = pair
        if start >= end:
            raise _fail(name, pair, "empty or reversed turn: start must be < end")
        if start < prompt_length:
            raise _fail(name, pair, f"starts inside the prompt (prompt_length={prompt_length})")
        if end > n:
            raise _fail(name, pair, f"ends past the sequence (len(input_ids)={n})")
        if start < prev_end:
            raise _fail(name, pair, f"overlaps or is out of order with the previous turn ending at {prev_end}")
        prev_end = end
        spans.append(pair)

    executable = [_check_bool(f"executable[{i}]", x) for i, x in enumerate(_as_list("executable", d["executable"]))]
    if len(executable) != len(spans):
        raise _fail("executable", executable, f"needs one entry per turn: {len(spans)} turns, {len(executable)} entries")

    reward = d["reward"]
    if not isinstance(reward, numbers.Real) or isinstance(reward, bool):
        raise _fail("reward", reward, f"must be a float, not {type(reward).__name__}")
    reward = float(reward)
    if not math.isfinite(reward):
        raise _fail("reward", reward, "must be finite (no NaN/inf)")

    won = _check_bool("won", d["won"])

    messages = d.get("messages")
    if messages is not None:
        messages = _as_list("messages", messages)
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping) or "role" not in m:
                raise _fail(f"messages[{i}]", m, "must be a dict with at least a 'role'")
        messages = [dict(m) for m in messages]

    actions = d.get("actions")
    if actions is not None:
        actions = _as_list("actions", actions)
        for i, a in enumerate(actions):
            if not isinstance(a, str):
                raise _fail(f"actions[{i}]", a, f"must be a str, not {type(a).__name__}")
        if len(actions) != len(spans):
            raise _fail("actions", actions, f"needs one entry per turn: {len(spans)} turns, {len(actions)} entries")

    truncated = d.get("truncated")
    if truncated is not None:
        truncated = _check_bool("truncated", truncated)

    extra = d.get("extra")
    if extra is not None:
        if not isinstance(extra, Mapping):
            raise _fail("extra", extra, f"must be a dict, not {type(extra).__name__}")
        bad_key = _non_str_key(extra)
        if bad_key is not None:
            raise _fail("extra", extra, f"keys must be str, found {bad_key!r}")
        try:
            extra = json.loads(json.dumps(dict(extra), allow_nan=False))
        except (TypeError, ValueError) as e:
            raise _fail("extra", extra, f"must be JSON-serialisable with str keys and finite numbers: {e}") from None
        layout = extra.get(LAYOUT_KEY)
        if layout is not None and layout not in LAYOUTS:
            raise _fail(f"extra[{LAYOUT_KEY!r}]", layout, f"must be one of {LAYOUTS}")
        contrib = extra.get(CONTRIBUTIONS_KEY)
        if contrib is not None and (not isinstance(contrib, list) or len(contrib) != len(spans)):
            raise _fail(f"extra[{CONTRIBUTIONS_KEY!r}]", contrib, f"must be a list with one value per turn ({len(spans)})")

    return TrajectoryRecord(
        format_version=FORMAT_VERSION,
        uid=uid,
        episode_id=episode_id,
        env_name=env_name,
        task_id=task_id,
        tokenizer=tokenizer,
        input_ids=input_ids,
        prompt_length=prompt_length,
        turn_spans=spans,
        executable=executable,
        reward=reward,
        won=won,
        messages=messages,
        actions=actions,
        truncated=truncated,
        extra=extra,
    )


# --------------------------------------------------------------------------------------------------------------
# both layouts


def record_layout(rec: TrajectoryRecord) -> str:
    """The layout ``rec`` was played in: ``extra["layout"]``, ``"full"`` when absent (older records)."""
    return str((rec.extra or {}).get(LAYOUT_KEY) or "full")


def prompt_pieces(rec: TrajectoryRecord) -> dict:
    """``extra["prompt_pieces"]`` of ``rec``, checked (see the module docstring). Raises :class:`RecordError` when
    the record does not keep them (written before they were, or not by the env_agent loop): such a record can only
    be used in the full layout."""
    pieces = (rec.extra or {}).get(PIECES_KEY)
    where = f"trajectory record {rec.episode_id!r}"
    if pieces is None:
        raise RecordError(
            f"{where} has no extra[{PIECES_KEY!r}] (the raw observations and prompt settings), so its window-layout "
            "prompts cannot be rebuilt; it was collected before records kept them. Use it in the full layout, or "
            "collect again with env.collect_dir (either env.history)"
        )
    if not isinstance(pieces, Mapping):
        raise _fail(f"extra[{PIECES_KEY!r}]", pieces, "must be a dict")
    if int(pieces.get("version", -1)) != PIECES_VERSION:
        raise _fail(f"extra[{PIECES_KEY!r}]['version']", pieces.get("version"), f"this reader knows {PIECES_VERSION}")
    obs, infos, T = pieces.get("observations"), pieces.get("infos"), rec.num_turns
    if not isinstance(obs, list) or not all(isinstance(o, str) for o in obs) or len(obs) < T:
        raise _fail(f"extra[{PIECES_KEY!r}]['observations']", obs, f"must be a list of >= {T} str (one per turn)")
    if not isinstance(infos, list) or len(infos) != len(obs) or not all(isinstance(i, Mapping) for i in infos):
        raise _fail(f"extra[{PIECES_KEY!r}]['infos']", infos, f"must be a list of {len(obs)} dicts")
    if rec.actions is None:
        raise _fail("actions", None, f"{where}: the window layout's history shows the actions; they are required")
    shown = pieces.get("history_shown")
    if shown is not None and (not isinstance(shown, list) or len(shown) != T):
        raise _fail(f"extra[{PIECES_KEY!r}]['history_shown']", shown, f"must be a list of {T} ints")
    return dict(pieces)


# --------------------------------------------------------------------------------------------------------------
# files


def _suffix(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"unknown trajectory record file type {str(path)!r}: use a {' or '.join(SUFFIXES)} suffix")
    return suffix


def shard_path(directory: str | os.PathLike, prefix: str = "records", suffix: str = ".jsonl") -> Path:
    """A file name in ``directory`` that no other process will pick: ``{prefix}-{host}-{pid}-{rand}{suffix}``."""
    if suffix not in SUFFIXES:
        raise ValueError(f"suffix must be one of {SUFFIXES}, not {suffix!r}")
    host = socket.gethostname().replace(os.sep, "_") or "host"
    return Path(directory) / f"{prefix}-{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


_PARQUET_JSON_COLUMNS = ("messages", "extra")


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's (or a directory's entries') data to disk, so a rename after it survives a power cut."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if os.path.isdir(path) else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory; the data itself was flushed
        if not os.path.isdir(path):
            raise
    finally:
        os.close(fd)


def _to_row(rec: TrajectoryRecord) -> dict[str, Any]:
    row = dataclasses.asdict(rec)
    for key in _PARQUET_JSON_COLUMNS:
        row[key] = None if row[key] is None else json.dumps(row[key], ensure_ascii=False)
    return row


def _parquet_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("format_version", pa.int32()),
            ("uid", pa.string()),
            ("episode_id", pa.string()),
            ("env_name", pa.string()),
            ("task_id", pa.string()),
            ("tokenizer", pa.string()),
            ("input_ids", pa.list_(pa.int64())),
            ("prompt_length", pa.int64()),
            ("turn_spans", pa.list_(pa.list_(pa.int64()))),
            ("executable", pa.list_(pa.bool_())),
            ("reward", pa.float64()),
            ("won", pa.bool_()),
            ("messages", pa.string()),
            ("actions", pa.list_(pa.string())),
            ("truncated", pa.bool_()),
            ("extra", pa.string()),
        ]
    )


class RecordWriter:
    """Write validated records to one file; use as a context manager.

    ``.jsonl``: opened in append mode, every :meth:`write` appends and flushes one line (collect with it during
    rollout). ``.parquet``: records are buffered and the file is written atomically on :meth:`close`; an
    existing file at that path is replaced, but only on a clean exit: when the ``with`` block raises (or after
    :meth:`abort`) the existing file is left as it was.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.suffix = _suffix(self.path)
        self.count = 0
        self._rows: list[dict] = []
        self._fd: int | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.suffix == ".jsonl":
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, record: Mapping[str, Any] | TrajectoryRecord) -> TrajectoryRecord:
        rec = validate_record(record)
        if self.suffix == ".jsonl":
            if self._fd is None:
                raise ValueError(f"RecordWriter({str(self.path)!r}) is closed")
            line = json.dumps(rec.to_dict(), ensure_ascii=False, allow_nan=False) + "\n"
            data = line.encode("utf-8")
            written = os.write(self._fd, data)
            while written < len(data):  # short writes are rare (signals, full disk); finish the line
                written += os.write(self._fd, data[written:])
        else:
            self._rows.append(_to_row(rec))
        self.count += 1
        return rec

    def write_many(self, records: Iterable[Mapping[str, Any] | TrajectoryRecord]) -> int:
        n = 0
        for r in records:
            self.write(r)
            n += 1
        return n

    def close(self) -> None:
        if self.suffix == ".jsonl":
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            return
        if self._rows is None:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(self._rows, schema=_parquet_schema())
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            pq.write_table(table, tmp)
            fsync_path(tmp)
            os.replace(tmp, self.path)
            fsync_path(self.path.parent)
        finally:
            if tmp.exists():
                tmp.unlink()
        self._rows = None

    def abort(self) -> None:
        """Close without publishing: a ``.parquet`` file keeps its previous content (or stays absent); the lines
        a ``.jsonl`` writer already appended stay (each is a complete record)."""
        if self.suffix == ".jsonl":
            self.close()
        else:
            self._rows = None

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # the records before the error are not the whole set: never replace a file with a part of one
            self.abort()


def write_records(path: str | os.PathLike, records: Iterable[Mapping[str, Any] | TrajectoryRecord]) -> int:
    """Write ``records`` to ``path`` (``.jsonl`` appends, ``.parquet`` replaces). Returns how many."""
    with RecordWriter(path) as w:
        return w.write_many(records)


def expand_paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Files from paths, glob patterns and directories (all ``*.jsonl``/``*.parquet`` inside), sorted and
    de-duplicated. Raises ``FileNotFoundError`` when nothing matches."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for p in paths:
        p = str(p)
        if os.path.isdir(p):
            hits = [str(x) for x in Path(p).rglob("*") if x.suffix in SUFFIXES and not x.name.startswith(".")]
        elif any(ch in p for ch in "*?["):
            hits = _glob.glob(p, recursive=True)
        else:
            if not os.path.exists(p):
                raise FileNotFoundError(f"trajectory record file {p!r} does not exist")
            hits = [p]
        out.extend(Path(h) for h in sorted(hits))
    seen: set[Path] = set()
    files = [f for f in out if not (f in seen or seen.add(f))]
    if not files:
        raise FileNotFoundError(f"no trajectory record files match {list(map(str, paths))}")
    for f in files:
        _suffix(f)
    return files


def iter_records(paths: str | os.PathLike | Iterable[str | os.PathLike], skip_invalid: bool = False) -> Iterator[TrajectoryRecord]:
    """Yield validated records from ``.jsonl``/``.parquet`` files, globs or directories, in file order.

    A bad record raises :class:`RecordError` naming the file and line/row, unless ``skip_invalid`` (then it
    is skipped with a warning). A truncated last line of a ``.jsonl`` file that is still being written is
    treated the same way."""
    import warnings

    for path in expand_paths(paths):
        for where, raw in _iter_raw(path):
            try:
                if isinstance(raw, Exception):
                    raise raw
                yield validate_record(raw)
            except RecordError as e:
                msg = f"{path}:{where}: {e}"
                if not skip_invalid:
                    raise RecordError(msg) from None
                warnings.warn(f"skipping invalid trajectory record: {msg}", stacklevel=2)


def _iter_raw(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, parsed dict or the RecordError that parsing raised) for every record of one file."""
    if path.suffix.lower() == ".jsonl":
        with open(path, "rb") as f:  # bytes: a line torn inside a multi-byte character fails alone, with its place
            for lineno, data in enumerate(f, 1):
                if data.strip():
                    try:
                        raw = json.loads(data.decode("utf-8"))
                    except UnicodeDecodeError as e:
                        raw = RecordError(f"invalid UTF-8 at byte {e.start} of the line (a torn write?)")
                    except json.JSONDecodeError as e:
                        raw = RecordError(f"invalid JSON ({e})")
                    yield f"line {lineno}", raw
    else:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        row = 0
        for batch in pf.iter_batches():
            for raw in batch.to_pylist():
                row += 1
                for key in _PARQUET_JSON_COLUMNS:
                    if raw.get(key) is not None:
                        raw[key] = json.loads(raw[key])
                yield f"row {row}", {k: v for k, v in raw.items() if not (k in _OPTIONAL and v is None)}


def read_records(paths: str | os.PathLike | Iterable[str | os.PathLike], skip_invalid: bool = False) -> list[TrajectoryRecord]:
    """All records of :func:`iter_records` as a list."""
    return list(iter_records(paths, skip_invalid=skip_invalid))


__all__ = [
    "CONTRIBUTIONS_KEY",
    "FORMAT_VERSION",
    "LAYOUTS",
    "LAYOUT_KEY",
    "PIECES_KEY",
    "PIECES_VERSION",
    "RecordError",
    "RecordWriter",
    "TrajectoryRecord",
    "expand_paths",
    "fsync_path",
    "iter_records",
    "prompt_pieces",
    "read_records",
    "record_layout",
    "shard_path",
    "validate_record",
    "write_records",
]
