"""Success / score / grounding table from the generations a validation-only verl run dumps.

    python -m recipe.spa.eval_table outputs/eval/alfworld/<run>/validation [more dirs or .jsonl files] \
        [--markdown] [--split "valid_unseen (alfworld_test.parquet)"]

verl writes ``<trainer.validation_data_dir>/<step>.jsonl`` with one line per agent-loop output holding the reward
managers' scalars (``spa/won``, ``spa/task_score``, ``spa/executable_rate``, ``spa/num_turns``,
``spa/truncated``, ``spa/task_type``, ...) and its TransferQueue key as ``uid`` (``{uid}_{session_id}_{index}``).
In the window layout (``env.history=window``) a session is one line per step, each with the episode's scalars
(verl's v1 ``_validate`` copies the final row's to every row); each session counts once (its final line), so
nothing is weighted by episode length. For a directory the newest step file is read. The numbers come from
``spa_reward.metrics.episode_metrics``, the function the ``spa`` trainer mode logs during training, so both
agree: success rate (overall and per task type), mean task score, grounding = mean executable-action rate per
episode (AgentBoard style), mean assistant turns. An episode the env failed (``spa/env_failed``: open/reset/step
timeout or crash, not the policy's doing) is left out of these and counted in ``env_fail``; ``episodes`` counts all.
(verl's own ``val-core/*`` metrics score such an episode 0.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spa_reward.layout import session_key
from spa_reward.metrics import episode_metrics

COLUMNS = ("episodes", "env_fail", "success", "score", "grounding", "turns")


def latest_dump(path: Path) -> Path:
    """``path`` itself for a file; for a directory its ``<step>.jsonl`` with the largest step."""
    if path.is_file():
        return path
    dumps = [p for p in path.glob("*.jsonl") if p.stem.lstrip("-").isdigit()]
    if not dumps:
        raise FileNotFoundError(f"no <step>.jsonl generation dump in {path} (set trainer.validation_data_dir)")
    return max(dumps, key=lambda p: int(p.stem))


class DumpError(ValueError):
    """A generation dump that cannot make a table (no episodes, a torn or foreign line); names the file and line."""


def _session(row: dict, number: int) -> tuple[str, int]:
    """(session, step index) of a dump line from verl's ``uid`` field ``{uid}_{session_id}_{index}``; a line without
    one is an episode of its own."""
    key = row.get("uid")
    if not isinstance(key, str) or not key:
        return f"\0line{number}", 0  # "\0": never a real key
    return session_key(key)


def episode_infos(path: Path, skip_invalid: bool = False) -> tuple[list[dict], int]:
    """(one ``episode_info``-like dict per dumped episode, number of lines skipped). The lines of one session
    (window layout: one per step) are one episode, read from its final line. A line that is not valid UTF-8 JSON (a
    torn write) or lacks the reward managers' fields raises :class:`DumpError` with ``file:line``, or is skipped and
    counted with ``skip_invalid``; a dump without episodes always raises."""
    episodes: dict[str, tuple[int, dict]] = {}  # session -> (step index, info of its latest line)
    skipped = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
                if not isinstance(row, dict) or "spa/won" not in row:
                    raise ValueError("no 'spa/won' field; was this run's reward manager 'outcome', 'spa' or 'istar'?")
                info = {
                    "won": float(row["spa/won"]),
                    "score": float(row.get("spa/task_score", 0.0)),
                    "executable_rate": float(row.get("spa/executable_rate", 0.0)),
                    "num_turns": float(row.get("spa/num_turns", 0.0)),
                    "truncated": float(row.get("spa/truncated", 0.0)),
                    "task_type": str(row.get("spa/task_type", "") or ""),
                    "env_failed": float(row.get("spa/env_failed", 0.0)),
                }
            except (UnicodeDecodeError, ValueError, TypeError) as exc:
                if not skip_invalid:
                    raise DumpError(f"{path}:{number}: {exc} (pass --skip-invalid to skip such lines)") from None
                skipped += 1
                continue
            session, step = _session(row, number)
            if session not in episodes or step >= episodes[session][0]:
                episodes[session] = (step, info)
    infos = [info for _, info in episodes.values()]
    if not infos:
        raise DumpError(f"{path}: no episodes" + (f" ({skipped} invalid lines skipped)" if skipped else "")
                        + "; was the validation run cut short?")
    return infos, skipped


def table_rows(infos: list[dict]) -> list[tuple[str, dict]]:
    """[(group, {column: value})]: ``all`` first, then each task type."""
    groups = {"all": infos}
    for t in sorted({i["task_type"] for i in infos if i["task_type"]}):
        groups[t] = [i for i in infos if i["task_type"] == t]
    rows = []
    for name, group in groups.items():
        m = episode_metrics(group, prefix="e")
        rows.append((name, {"episodes": len(group), "env_fail": int(m.get("e/env_failures", 0)),
                            "success": m.get("e/success_rate", float("nan")),
                            "score": m.get("e/score", float("nan")),
                            "grounding": m.get("e/executable_rate", float("nan")),
                            "turns": m.get("e/num_turns", float("nan"))}))
    return rows


def render(title: str, rows: list[tuple[str, dict]], markdown: bool = False) -> str:
    def fmt(col, v):
        if col in ("episodes", "env_fail"):
            return str(v)
        return f"{100 * v:.1f}" if col in ("success", "score", "grounding") else f"{v:.1f}"

    header = ["group", *COLUMNS]
    body = [[name, *(fmt(c, vals[c]) for c in COLUMNS)] for name, vals in rows]
    if markdown:
        lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    line = lambda r: "  ".join(x.rjust(w) if i else x.ljust(w) for i, (x, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([title, line(header), *(line(r) for r in body)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipe.spa.eval_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="validation_data_dir folders or <step>.jsonl files")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--split", default=None, help="which task split was played (printed in the title)")
    parser.add_argument("--skip-invalid", action="store_true", help="skip (and count) torn or foreign dump lines")
    args = parser.parse_args(argv)
    for p in args.paths:
        try:
            dump = latest_dump(Path(p))
            infos, skipped = episode_infos(dump, args.skip_invalid)
        except (DumpError, FileNotFoundError) as exc:
            print(f"eval_table: {exc}", file=sys.stderr)
            return 1
        split = f"; split: {args.split}" if args.split else ""
        note = f"; {skipped} invalid lines skipped" if skipped else ""
        print(render(f"{p} ({dump.name}{split}{note}); success/score/grounding in %", table_rows(infos),
                     args.markdown))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
