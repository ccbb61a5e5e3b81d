"""Shared output of the benchmark scripts: a markdown table on stdout and the raw rows as JSON."""

from __future__ import annotations

import json
from pathlib import Path


def report(rows: list[dict], cols: list[str], out: str | None = None, missing: str = "-") -> None:
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, missing)) for c in cols) + " |")
    if out:
        Path(out).write_text(json.dumps(rows, indent=2))
