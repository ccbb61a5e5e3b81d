"""Write the task lists of an environment as verl RL parquet files, one row per task.

    python -m envs.prepare alfworld --output-dir data/ --data-dir ../shared/data/alfworld
    python -m envs.prepare webshop --output-dir data/ --splits train,test --max-train 2000 --seed 0

writes ``<output-dir>/<env>_<split>.parquet``. A row only names a task; the agent loop (``recipe/``) builds
the real prompt from the environment (``envs.prompts``), so the ``prompt`` column is a short placeholder.
Row contract (verl ``RLHFDataset``)::

    data_source   "spa_rl/<env>"                      (reward_fn_key; also the metric group)
    agent_name    "env_agent" (--agent-name)          (selects the agent loop)
    prompt        [{"role": "user", "content": "<env> task <task_id>"}]
    ability       "agent"
    reward_model  {"style": "env", "ground_truth": <task_id>}
    extra_info    {"index": i, "env_name", "task_id", "split", "task_type"}

Splits (``SPLITS``: our split name -> the adapter's ``list_tasks`` split):

* ALFWorld: ``train`` = ``json_2.1.1/train``; ``val`` = ``valid_seen`` (eval_in_distribution, 140 games);
  ``test`` = ``valid_unseen`` (eval_out_of_distribution, 134 games) when the data has it, else it is skipped
  with a message (the project's shared data holds it back).
* WebShop: goal ids in WebShop's goal order (synthetic goals of the product set; 6,910 for the 1000-product
  set). ``test`` = goals 0-499 (GiGPO/verl-agent's eval set); ``val`` = goals 500-599 (our carve-out,
  ``WEBSHOP_VAL_SIZE``, passed to the adapter as ``val_size``); ``train`` = goals 600 and up (GiGPO trains on
  500 and up). The three are disjoint.
* VirtualHome: the adapter's own ``train``/``val``/``test`` splits.

Output is deterministic: the same arguments give byte-identical files. ``--max-train N`` keeps a seeded random
subset of N train tasks, in their original order; val/test are not subsampled unless ``--max-tasks N`` is given,
which caps every split at N tasks the same way (for small trial runs; ``examples/prepare_data.sh`` passes it to
``envs.expert`` too). ``--workers`` is accepted for the same reason and has no effect here (listing tasks is
quick). Without ``--data-dir`` the adapter's default is used: ``$SPA_DATA/<env>`` (see :mod:`envs.paths`).
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from pathlib import Path
from typing import Any

from envs import check_env_name, env_names, make_env
from envs.base import UNKNOWN_TASK_TYPE
from envs.cli import error_exit, non_negative_int, positive_int

logger = logging.getLogger(__name__)

DEFAULT_AGENT_NAME = "env_agent"
ALL_SPLITS = ("train", "val", "test")

# constructor kwargs that define the splits (WebShop: the val carve-out, goals 500-599)
WEBSHOP_VAL_SIZE = 100
SPLIT_ENV_KWARGS: dict[str, dict[str, Any]] = {"webshop": {"val_size": WEBSHOP_VAL_SIZE}}

# our split name -> the adapter's split name, per environment
SPLITS: dict[str, dict[str, str]] = {
    "alfworld": {"train": "train", "val": "valid_seen", "test": "valid_unseen"},
    "webshop": {"train": "train", "val": "val", "test": "test"},
    "virtualhome": {"train": "train", "val": "val", "test": "test"},
}

__all__ = ["ALL_SPLITS", "SPLITS", "SPLIT_ENV_KWARGS", "build_rows", "data_source", "env_kwargs", "list_split",
           "main", "prepare", "subsample_tasks", "write_parquet"]


def data_source(env_name: str) -> str:
    return f"spa_rl/{env_name}"


def env_kwargs(env_name: str, data_dir: str | Path | None = None, **extra: Any) -> dict[str, Any]:
    """Constructor kwargs for ``make_env``: the split settings of ``SPLIT_ENV_KWARGS``, ``data_dir`` only when
    given (adapters have their own default), then ``extra``."""
    kwargs = dict(SPLIT_ENV_KWARGS.get(env_name, {}))
    if data_dir is not None:
        kwargs["data_dir"] = str(data_dir)
    kwargs.update(extra)
    return kwargs


def list_split(env, split: str) -> list[str]:
    """Task ids of our ``split`` ('train', 'val' or 'test') for an environment instance."""
    if split not in ALL_SPLITS:
        raise ValueError(f"Unknown split {split!r}; use one of {', '.join(ALL_SPLITS)}")
    return list(env.list_tasks(SPLITS[env.name][split]))


def subsample_tasks(task_ids: list[str], n: int | None, seed: int) -> list[str]:
    if n is None or n >= len(task_ids):
        return task_ids
    if n < 0:
        raise ValueError(f"max tasks must be >= 0, got {n}")
    keep = sorted(random.Random(seed).sample(range(len(task_ids)), n))
    return [task_ids[i] for i in keep]


def build_rows(env_name: str, split: str, *, env=None, data_dir: str | Path | None = None, max_tasks: int | None = None,
               seed: int = 0, agent_name: str = DEFAULT_AGENT_NAME, **kwargs: Any) -> list[dict]:
    """The parquet rows of one split. Pass an ``env`` to reuse it, else one is built from ``data_dir``/kwargs."""
    check_env_name(env_name)
    own_env = env is None
    env = make_env(env_name, **env_kwargs(env_name, data_dir, **kwargs)) if own_env else env
    try:
        task_ids = subsample_tasks(list_split(env, split), max_tasks, seed)
        rows = []
        for index, task_id in enumerate(task_ids):
            task_id = str(task_id)
            rows.append({
                "data_source": data_source(env_name),
                "agent_name": agent_name,
                "prompt": [{"role": "user", "content": f"{env_name} task {task_id}"}],
                "ability": "agent",
                "reward_model": {"style": "env", "ground_truth": task_id},
                "extra_info": {"index": index, "env_name": env_name, "task_id": task_id, "split": split,
                               "task_type": str(env.task_type(task_id))},
            })
        return rows
    finally:
        if own_env:
            env.close()


def write_parquet(rows: list[dict], path: str | Path) -> Path:
    """Write rows as parquet (fixed schema and writer options, so equal rows give equal bytes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not rows:
        raise ValueError(f"no rows to write to {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, path, compression="snappy")
    return path


def prepare(env_name: str, output_dir: str | Path, splits: list[str] | tuple[str, ...] = ALL_SPLITS,
            data_dir: str | Path | None = None, max_train: int | None = None, seed: int = 0,
            agent_name: str = DEFAULT_AGENT_NAME, max_tasks: int | None = None) -> dict[str, Path]:
    """Write ``<output_dir>/<env>_<split>.parquet`` for each split that has tasks; return {split: path}.

    ``max_train`` caps the train split, ``max_tasks`` every split (seeded subsets in task order)."""
    check_env_name(env_name)
    env = make_env(env_name, **env_kwargs(env_name, data_dir))
    written: dict[str, Path] = {}
    try:
        for split in splits:
            try:
                caps = [n for n in (max_tasks, max_train if split == "train" else None) if n is not None]
                rows = build_rows(env_name, split, env=env, max_tasks=min(caps) if caps else None,
                                  seed=seed, agent_name=agent_name)
            except (ValueError, FileNotFoundError) as exc:
                print(f"[{env_name}] split {split!r} skipped: {exc}", file=sys.stderr)
                continue
            if not rows:
                print(f"[{env_name}] split {split!r} skipped: no tasks in this data", file=sys.stderr)
                continue
            written[split] = write_parquet(rows, Path(output_dir) / f"{env_name}_{split}.parquet")
            print(f"[{env_name}] {split}: {len(rows)} tasks -> {written[split]}")
            unknown = [r["extra_info"]["task_id"] for r in rows
                       if r["extra_info"]["task_type"] == UNKNOWN_TASK_TYPE]
            if unknown:
                print(f"[{env_name}] warning: {split}: {len(unknown)} of {len(rows)} tasks have task_type "
                      f"{UNKNOWN_TASK_TYPE!r} (first: {unknown[0]}): the env could not read their type, so "
                      "per-type metrics lump them together; check that these tasks load (e.g. `python -c \"from "
                      f"envs import make_env; make_env('{env_name}').reset('{unknown[0]}')\"`)", file=sys.stderr)
    finally:
        env.close()
    return written


def _parse_splits(text: str) -> list[str]:
    splits = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in splits if s not in ALL_SPLITS]
    if bad or not splits:
        raise argparse.ArgumentTypeError(f"splits must be a comma list of {', '.join(ALL_SPLITS)}; got {text!r}")
    return splits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m envs.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("env", help=f"one of: {', '.join(env_names())}")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--data-dir", default=None, help="environment data folder (default: $SPA_DATA/<env>)")
    parser.add_argument("--splits", type=_parse_splits, default=list(ALL_SPLITS), help="default: train,val,test")
    parser.add_argument("--max-train", type=non_negative_int, default=None,
                        help="keep a seeded random subset of N train tasks")
    parser.add_argument("--max-tasks", type=non_negative_int, default=None,
                        help="keep a seeded random subset of at most N tasks in every split (trial runs)")
    parser.add_argument("--workers", type=positive_int, default=1,
                        help="accepted for symmetry with envs.expert; no effect (listing tasks is quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--agent-name", default=DEFAULT_AGENT_NAME)
    args = parser.parse_args(argv)
    try:
        check_env_name(args.env)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        written = prepare(args.env, args.output_dir, args.splits, args.data_dir, args.max_train, args.seed,
                          args.agent_name, max_tasks=args.max_tasks)
    except (FileNotFoundError, ImportError) as exc:  # no data folder / no engine: say so, no traceback
        return error_exit(parser.prog, exc)
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
