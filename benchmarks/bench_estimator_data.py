"""Memory of the estimator training data: bytes held per token, records-as-lists vs packed int32 examples.

Generates a jsonl record file (token ids drawn from a 150k vocabulary, like a real policy tokenizer), then loads
it both ways under ``tracemalloc`` and prints the bytes still held per token once loading is done:

* ``records as lists``: ``read_records`` + ``records_to_examples`` (what training held before: every record's
  Python int lists, plus the examples);
* ``packed (ExampleSet)``: ``spa_reward.progress.train.load_examples`` (the records are streamed; only int32
  tokens and small per-example arrays stay).

    python benchmarks/bench_estimator_data.py [--records 200 --tokens 4000 --turns 10]
"""

from __future__ import annotations

import argparse
import gc
import random
import tempfile
import tracemalloc
from pathlib import Path

from envs.cli import positive_int


def make_records(path: Path, n: int, tokens: int, turns: int, seed: int = 0) -> int:
    from spa_reward.records import RecordWriter

    rng = random.Random(seed)
    total = 0
    with RecordWriter(path) as w:
        for i in range(n):
            ids = [rng.randrange(150_000) for _ in range(tokens)]
            prompt = tokens // (2 * turns)
            step = (tokens - prompt) // turns
            spans = [[prompt + t * step + step // 2, prompt + (t + 1) * step] for t in range(turns)]
            w.write({"format_version": 1, "uid": f"g{i // 8}", "episode_id": f"e{i}", "env_name": "bench",
                     "task_id": str(i // 8), "tokenizer": "bench", "input_ids": ids, "prompt_length": prompt,
                     "turn_spans": spans, "executable": [True] * turns, "reward": rng.random(), "won": False})
            total += tokens
    return total


def held_bytes(fn) -> tuple[object, int, int]:
    """(result, bytes still allocated after ``fn`` returns, peak bytes during it)."""
    gc.collect()
    tracemalloc.start()
    result = fn()
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, current, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=positive_int, default=200)
    ap.add_argument("--tokens", type=positive_int, default=4000)
    ap.add_argument("--turns", type=positive_int, default=10)
    args = ap.parse_args()

    from spa_reward.progress import train as train_mod
    from spa_reward.progress.data import records_to_examples
    from spa_reward.records import read_records

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.jsonl"
        total = make_records(path, args.records, args.tokens, args.turns)
        cli = train_mod.build_parser().parse_args(["--records", str(path), "--output", str(Path(tmp) / "o")])

        def as_lists():
            records = read_records(path)
            return records, records_to_examples(records, 1 << 30, True)

        def packed():
            return train_mod.load_examples(cli, 1 << 30, True)

        rows = []
        for name, fn in (("records as lists (before)", as_lists), ("packed ExampleSet (now)", packed)):
            result, current, peak = held_bytes(fn)
            rows.append((name, current / total, peak / total))
            del result
        print(f"{args.records} records x {args.tokens} tokens ({total:,} tokens), jsonl {path.stat().st_size / total:.1f} "
              "bytes/token on disk")
        print("| loading | bytes held per token | peak bytes per token while loading |\n|---|---|---|")
        for name, held, peak in rows:
            print(f"| {name} | {held:.1f} | {peak:.1f} |")


if __name__ == "__main__":
    main()
