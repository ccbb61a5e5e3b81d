"""Serving the progress estimator: score c_t for finished trajectories.

* :class:`ProgressScorer`: in-process scorer. ``score([{"input_ids": [...], "turn_ends": [...]}, ...])`` returns
  one list of c_t per item (same length as its ``turn_ends``). Items may also carry ``"prompt_length"`` (the
  number of prompt tokens): pass it to truncate over-long sequences exactly as in training (the prompt is kept,
  whole leading turns are dropped; see :mod:`spa_reward.progress.data`). Turns dropped by truncation get 0.0.
  Sequences are sorted by length and run in batches of ``max_batch_size`` (and ``max_batch_tokens``).
  The head's readouts become c_t under the objective the estimator was trained with (``config.objective``,
  ``spa_reward.steprm.objectives``): ``sum`` reads c_t at each turn end; ``prefix`` reads the value V_t before
  every turn, at the token before the turn's first one, and c_t = V_{t+1} - V_t with V_T = R: its items must carry
  ``turn_starts`` (first token of each turn) and ``reward`` (R), and the rows of one window-layout episode share an
  ``episode`` key and come in step order (their values chain across the rows).
* :func:`get_progress_scorer`: a named Ray actor wrapping the scorer, shared by every process of the Ray job
  (agent-loop workers, reward workers). ``await actor.score.remote(batch)`` from async code, or
  ``ray.get(actor.score.remote(batch))``. Concurrent calls are coalesced into shared forward passes.
* :func:`check_tokenizer_compatible`: the reward feeds the *policy's* token ids to the estimator, so both must
  share one vocabulary; this raises when they do not.
* :func:`check_estimator_objective`: a run whose ``algorithm.spa.objective`` is not the one the estimator was
  trained with is refused at start-up.
* :func:`check_estimator_layout`: an estimator trained in one context layout (``--layout full|window``, stored as
  ``config.extra["layout"]`` / ``["history_length"]``; estimators without it were trained on packed rows) is
  refused for a run in the other layout (or with another window length), at start-up.

NaN/inf outputs are returned as they are (not filtered or replaced): the reward layer counts and handles them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spa_reward import gpu_actor_device

logger = logging.getLogger(__name__)

TRAIN_HINT = (
    "train one with `python -m spa_reward.progress.train --records <rollout records> --model <SFT policy "
    "checkpoint> --output <dir>`"
)


def resolve_estimator_dir(checkpoint_dir: str | os.PathLike) -> Path:
    """The directory holding a saved estimator: ``checkpoint_dir`` itself, or, for a training output dir without
    a final estimator yet, the checkpoint named by its ``latest`` file. Raises ``FileNotFoundError`` naming the
    path and how to train one."""
    from .model import is_estimator_dir
    from .train import latest_checkpoint

    path = Path(checkpoint_dir).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"progress estimator checkpoint {str(path)!r} does not exist; {TRAIN_HINT}")
    if is_estimator_dir(path):
        return path
    latest = latest_checkpoint(path)
    if latest is not None and is_estimator_dir(latest):
        logger.warning("%s has no final estimator yet, using its latest checkpoint %s", path, latest)
        return latest
    raise FileNotFoundError(
        f"{str(path)!r} exists but holds no progress estimator (no config.json with model_type "
        f"'spa_progress_estimator' and no 'latest' checkpoint); {TRAIN_HINT}"
    )


@dataclass
class _Prepared:
    input_ids: list[int]
    turn_ends: list[int]
    kept: list[int]
    num_turns: int
    truncated: bool
    befores: list[int] | None = None  # prefix: the last token before each kept turn (data.before_positions)
    reward: float = 0.0  # prefix: R, the value after the episode's last step
    episode: str = ""  # prefix: rows with the same non-empty key are one episode (window layout)


class ProgressScorer:
    """Load a trained estimator and score trajectories.

    Args:
        checkpoint_dir: a saved estimator (the training ``--output`` dir, or one of its ``checkpoint-*`` dirs).
        device: ``"cuda"``, ``"cpu"``, ... (default: CUDA when available).
        dtype: backbone dtype (default bf16 on CUDA, fp32 on CPU).
        max_batch_size: sequences per forward pass.
        max_length: truncation length (default: the ``max_length`` the estimator was trained with; a larger value
            is allowed but scores positions the estimator never saw in training).
        max_batch_tokens: optional cap on padded tokens per forward pass (longest sequence x batch size).
    """

    def __init__(
        self,
        checkpoint_dir: str | os.PathLike,
        device: str | None = None,
        dtype: Any = None,
        max_batch_size: int = 16,
        max_length: int | None = None,
        max_batch_tokens: int | None = None,
    ):
        import torch

        from .model import ProgressEstimator

        self.checkpoint_dir = resolve_estimator_dir(checkpoint_dir)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = ProgressEstimator.from_pretrained(self.checkpoint_dir, device=self.device, dtype=dtype, merge_lora=True)
        self.model.requires_grad_(False)
        cfg = self.model.config
        self.max_length = int(max_length or cfg.max_length)
        if self.max_length > cfg.max_length:
            logger.warning("max_length %d exceeds the training max_length %d", self.max_length, cfg.max_length)
        self.keep_prompt = cfg.keep_prompt_on_truncation
        self.max_batch_size = int(max_batch_size)
        self.max_batch_tokens = max_batch_tokens
        self.vocab_rows = int(self.model.base_backbone.get_input_embeddings().weight.shape[0])
        self.stats = {"items": 0, "turns": 0, "truncated_items": 0, "dropped_turns": 0, "calls": 0}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------- public API

    def score(self, batch: Sequence[Mapping[str, Any]]) -> list[list[float]]:
        """c_t for every turn of every item (``{"input_ids", "turn_ends"[, "prompt_length"]}``), in input order."""
        return self.score_prepared(self.prepare(batch))

    def info(self) -> dict[str, Any]:
        cfg = self.model.config
        return {
            "checkpoint_dir": str(self.checkpoint_dir.resolve()),
            "device": str(self.device),
            "dtype": str(self.model.backbone_dtype),
            "head": cfg.head,
            "objective": cfg.objective,
            "tokenizer": cfg.tokenizer,
            "max_length": self.max_length,
            "keep_prompt_on_truncation": self.keep_prompt,
            "layout": str((cfg.extra or {}).get("layout") or "full"),
            "history_length": (cfg.extra or {}).get("history_length"),
            "max_batch_size": self.max_batch_size,
            "stats": dict(self.stats),
        }

    # ------------------------------------------------------------------------------------------------- internals

    def prepare(self, batch: Sequence[Mapping[str, Any]]) -> list[_Prepared]:
        """Validate and truncate (cheap, no model call). Raises ``ValueError`` naming the bad item."""
        from spa_reward.steprm.objectives import reads_before

        from .data import before_positions, check_turn_ends, truncate_for_estimator

        prefix = reads_before(self.model.config.objective)

        if isinstance(batch, Mapping):
            raise TypeError("score() takes a list of items, not a single dict")
        prepared = []
        for i, item in enumerate(batch):
            if not isinstance(item, Mapping) or "input_ids" not in item or "turn_ends" not in item:
                raise ValueError(f"item {i} must be a dict with 'input_ids' and 'turn_ends'")
            ids = item["input_ids"]
            ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
            ends = item["turn_ends"]
            ends = ends.tolist() if hasattr(ends, "tolist") else list(ends)
            try:
                check_turn_ends(ends, len(ids), name=f"item {i} turn_ends")
            except ValueError as e:
                raise ValueError(str(e)) from None
            if ids and (min(ids) < 0 or max(ids) >= self.vocab_rows):
                bad = min(ids) if min(ids) < 0 else max(ids)
                raise ValueError(
                    f"item {i} holds token id {bad}, outside the estimator vocabulary [0, {self.vocab_rows}): "
                    "the policy and the estimator tokenizers differ (see check_tokenizer_compatible)"
                )
            head = int(item.get("prompt_length") or 0) if self.keep_prompt else 0
            if ends and head > ends[0]:
                raise ValueError(f"item {i}: prompt_length {head} lies after the first turn end {ends[0]}")
            t = truncate_for_estimator(ids, ends, self.max_length, head)
            extra = {}
            if prefix and ends:
                missing = [k for k in ("turn_starts", "reward") if item.get(k) is None]
                if missing:
                    raise ValueError(f"item {i} has no {' / '.join(missing)}: the estimator's 'prefix' objective reads "
                                     "the value before each turn (turn_starts: first token of each turn) and ends at R")
                starts = item["turn_starts"]
                starts = starts.tolist() if hasattr(starts, "tolist") else list(starts)
                if len(starts) != len(ends) or any(not 0 <= int(a) <= int(e) for a, e in zip(starts, ends)):
                    raise ValueError(f"item {i}: turn_starts {starts} do not fit turn_ends {ends}")
                extra = {"befores": before_positions(t, starts), "reward": float(item["reward"]),
                         "episode": str(item.get("episode") or "")}
            prepared.append(_Prepared(t.input_ids, t.turn_ends, t.kept, len(ends), t.truncated, **extra))
        return prepared

    def score_prepared(self, prepared: Sequence[_Prepared]) -> list[list[float]]:
        from .model import predict_contributions

        if not prepared:
            return []
        order, rewards, episodes = episode_order(prepared)
        with self._lock:  # one forward at a time: torch modules are not re-entrant across threads
            preds, _ = predict_contributions(
                self.model,
                [prepared[i].input_ids for i in order],
                [prepared[i].turn_ends for i in order],
                [prepared[i].befores or [] for i in order],
                rewards, episodes,
                batch_size=self.max_batch_size,
                max_batch_tokens=self.max_batch_tokens,
            )
            preds = [preds[j] for j in sorted(range(len(order)), key=order.__getitem__)]  # back to input order
            self.stats["calls"] += 1
            self.stats["items"] += len(prepared)
            for p in prepared:
                self.stats["turns"] += p.num_turns
                self.stats["truncated_items"] += int(p.truncated)
                self.stats["dropped_turns"] += p.num_turns - len(p.kept)
        out = []
        for p, pred in zip(prepared, preds):
            full = [0.0] * p.num_turns
            for k, value in zip(p.kept, pred):
                full[k] = value
            out.append(full)
        return out


def record_item(record: Any) -> dict[str, Any]:
    """The scorer item of a trajectory record (``spa_reward.records.TrajectoryRecord``): its ids, turn ends and
    starts, prompt length and R, everything either objective reads."""
    return {"input_ids": record.input_ids, "turn_ends": record.turn_ends,
            "turn_starts": [a for a, _ in record.turn_spans], "prompt_length": record.prompt_length,
            "reward": float(record.reward)}


def episode_order(prepared: Sequence[Any]) -> tuple[list[int], list[float], list[int]]:
    """``(order, rewards, episodes)`` for :func:`~spa_reward.progress.model.predict_contributions`: the items
    reordered so that the rows of one episode (same non-empty ``episode``) are consecutive in their input order,
    each episode's R, and per reordered item the index of its episode. An item without ``episode`` is an episode of
    its own."""
    ids: dict[str, int] = {}
    first: list[int] = []
    owner = []
    for i, p in enumerate(prepared):
        key = getattr(p, "episode", "") or f"\0item{i}"
        e = ids.setdefault(key, len(ids))
        if e == len(first):
            first.append(i)
        owner.append(e)
    rewards = [float(getattr(prepared[i], "reward", 0.0)) for i in first]
    for i, p in enumerate(prepared):
        if float(getattr(p, "reward", 0.0)) != rewards[owner[i]]:
            raise ValueError(f"item {i}: episode {p.episode!r} has reward {p.reward} here and {rewards[owner[i]]} at "
                             f"item {first[owner[i]]}; the rows of one episode share its R")
    order = sorted(range(len(prepared)), key=lambda i: (owner[i], i))
    return order, rewards, [owner[i] for i in order]


# ---------------------------------------------------------------------------------------------------------- Ray


class Coalescer:
    """Concurrent ``submit(items)`` calls of one actor merged into shared passes of up to ``limit`` items: ``run(items)
    -> one result per item`` runs them on one worker thread, so the event loop stays responsive. A pass that raises
    fails every caller in it (and only them). Used by every scorer actor (progress, step-reward service)."""

    def __init__(self, run, limit: int = 256, thread_name: str = "scorer"):
        self._run = run
        self.limit = max(1, int(limit))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self._queue: list[tuple[list, asyncio.Future]] = []
        self._worker: asyncio.Task | None = None

    async def submit(self, items: list) -> list:
        if not items:
            return []
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((items, future))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            take, n = [], 0
            while self._queue and (not take or n + len(self._queue[0][0]) <= self.limit):
                take.append(self._queue.pop(0))
                n += len(take[-1][0])
            merged = [item for items, _ in take for item in items]
            try:
                results = await loop.run_in_executor(self._executor, self._run, merged)
            except Exception as e:  # the model failed on the merged batch: every caller in it gets the error
                for _, fut in take:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            start = 0
            for items, fut in take:
                if not fut.done():
                    fut.set_result(results[start : start + len(items)])
                start += len(items)


class ProgressScorerActor:
    """Ray actor body around :class:`ProgressScorer` (async). Concurrent ``score`` calls are validated one by one
    (a bad request fails alone) and then coalesced into shared forward passes of up to ``coalesce_items`` items
    (:class:`Coalescer`)."""

    def __init__(self, checkpoint_dir: str, coalesce_items: int = 256, **scorer_kwargs):
        self.scorer = ProgressScorer(checkpoint_dir, **scorer_kwargs)
        self.coalesce_items = max(1, int(coalesce_items))
        self._coalescer = Coalescer(self.scorer.score_prepared, self.coalesce_items, "progress-scorer")

    async def score(self, batch: list[dict]) -> list[list[float]]:
        return await self._coalescer.submit(self.scorer.prepare(batch))

    async def info(self) -> dict[str, Any]:
        return self.scorer.info()


def get_progress_scorer(
    checkpoint_dir: str | os.PathLike,
    name: str = "spa_progress_scorer",
    num_gpus: float = 0,
    num_cpus: float = 1,
    namespace: str | None = None,
    detached: bool = False,
    coalesce_items: int = 256,
    timeout_s: float | None = 600.0,
    max_restarts: int = 3,
    max_task_retries: int = 3,
    **scorer_kwargs,
):
    """Create, or return the existing, named Ray actor serving the estimator in ``checkpoint_dir``.

    The trainer process calls this once at start-up (``spa_reward.steprm.trainer_hooks``); reward workers look the
    actor up by name. It waits ``timeout_s`` for the actor to load its model and raises ``TimeoutError`` naming
    the GPUs asked for. Ray restarts a dead actor up to ``max_restarts`` times and retries its pending calls up to
    ``max_task_retries`` times.

    Every process of the Ray job (same ``namespace``) that calls this with the same ``name`` gets a handle to
    the same actor. ``detached=True`` lets the actor outlive the job that created it (kill it with
    ``ray.kill``). ``num_gpus=1`` puts it on a GPU (device ``cuda``, bf16 by default); ``scorer_kwargs`` go to
    :class:`ProgressScorer` (``max_batch_size``, ``max_length``, ``dtype``, ...). Calls ``ray.init()`` when Ray is
    not initialised yet. Raises ``FileNotFoundError`` for a missing checkpoint and ``ValueError`` when an actor of
    that name already serves a different checkpoint.
    """
    import ray

    path = resolve_estimator_dir(checkpoint_dir).resolve()
    if not ray.is_initialized():
        ray.init(namespace=namespace) if namespace else ray.init()
    if num_gpus and "device" not in scorer_kwargs:
        scorer_kwargs["device"] = gpu_actor_device()
    options: dict[str, Any] = {"name": name, "get_if_exists": True, "num_gpus": num_gpus, "num_cpus": num_cpus,
                               "max_restarts": int(max_restarts), "max_task_retries": int(max_task_retries)}
    if namespace is not None:
        options["namespace"] = namespace
    if detached:
        options["lifetime"] = "detached"
    actor = ray.remote(ProgressScorerActor).options(**options).remote(str(path), coalesce_items=coalesce_items, **scorer_kwargs)
    try:
        served = ray.get(actor.info.remote(), timeout=timeout_s)["checkpoint_dir"]
    except ray.exceptions.GetTimeoutError:
        raise TimeoutError(
            f"the progress scorer {name!r} (num_gpus={num_gpus}, num_cpus={num_cpus}) did not start within "
            f"{timeout_s} s; the cluster has {ray.cluster_resources()} with {ray.available_resources()} free. "
            "Give the scorer GPUs outside the trainer's pool (SCORER_GPUS in examples/rl_spa.sh) or lower "
            "algorithm.spa.scorer_num_gpus"
        ) from None
    if served != str(path):
        raise ValueError(f"a progress scorer named {name!r} already serves {served!r}, not {str(path)!r}; pick another name")
    return actor


# ---------------------------------------------------------------------------------------------------- layouts


def estimator_layout(estimator_dir: str | os.PathLike) -> tuple[str, int | None]:
    """(layout, history_length) the estimator in ``estimator_dir`` was trained on: ``config.extra["layout"]``
    (``"full"`` when absent: estimators saved before layouts were recorded were trained on packed rows) and
    ``config.extra["history_length"]`` (None in the full layout)."""
    from .model import ProgressEstimatorConfig

    extra = ProgressEstimatorConfig.load(resolve_estimator_dir(estimator_dir)).extra or {}
    layout = str(extra.get("layout") or "full")
    k = extra.get("history_length")
    return layout, (int(k) if layout == "window" and k is not None else None)


def check_estimator_objective(estimator_dir: str | os.PathLike, objective: str) -> None:
    """Raise ``ValueError`` when the estimator was trained with another objective than the run's
    (``algorithm.spa.objective``): its readouts would be turned into c_t the wrong way, or trained on with another
    loss (online)."""
    from .model import ProgressEstimatorConfig

    trained = ProgressEstimatorConfig.load(resolve_estimator_dir(estimator_dir)).objective
    if trained != str(objective):
        raise ValueError(
            f"the progress estimator {str(estimator_dir)!r} was trained with --objective {trained} but this run sets "
            f"algorithm.spa.objective={objective}: set algorithm.spa.objective={trained} (SPA_OBJECTIVE={trained} "
            f"for examples/rl_spa.sh) or train an estimator with --objective {objective}")


def check_estimator_layout(estimator_dir: str | os.PathLike, history: str, history_length: int | None = None) -> None:
    """Raise ``ValueError`` when the estimator was trained in another context layout than the run's
    (``env.history`` / ``env.history_length``): its c_t would be read off sequences it never saw."""
    layout, k = estimator_layout(estimator_dir)
    history = str(history or "full")
    run = "full" if history == "full" else f"window (env.history_length={history_length})"
    trained = "full" if layout == "full" else f"window (history_length={k})"
    same = layout == history and (layout == "full" or k is None or history_length is None
                                  or int(k) == int(history_length))
    if not same:
        fix = (f"--layout window --history-length {history_length}" if history == "window" else "--layout full")
        raise ValueError(
            f"the progress estimator {str(estimator_dir)!r} was trained in the {trained} layout but this run uses "
            f"env.history={run}: its contributions would be read off sequences it never saw. Train one for this "
            f"layout (python -m spa_reward.progress.train ... {fix}) or run with the estimator's layout "
            + ("(env.history=full)" if layout == "full" else f"(env.history=window env.history_length={k})")
        )


# ---------------------------------------------------------------------------------------------------- tokenizers


def _as_tokenizer(tok: Any, what: str):
    if isinstance(tok, (str, os.PathLike)):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(tok))
        except Exception as e:
            raise ValueError(f"cannot load the {what} tokenizer {str(tok)!r}: {e}") from e
    if not hasattr(tok, "get_vocab"):
        raise TypeError(f"the {what} tokenizer must be a name/path or a tokenizer with get_vocab(), got {type(tok).__name__}")
    return tok


def check_tokenizer_compatible(estimator_dir: str | os.PathLike, policy_tokenizer: Any) -> None:
    """Raise ``ValueError`` unless the estimator's tokenizer maps every token to the same id as the policy's.

    The SPA reward feeds the policy's token ids straight into the estimator, so the vocabularies (including added
    special tokens) must be identical. ``policy_tokenizer`` is a name/path or a tokenizer object. The estimator's
    tokenizer is the one saved in ``<estimator_dir>/tokenizer``, else the name in its config."""
    from .model import TOKENIZER_DIR, ProgressEstimatorConfig

    est_dir = resolve_estimator_dir(estimator_dir)
    config = ProgressEstimatorConfig.load(est_dir)
    if (est_dir / TOKENIZER_DIR).is_dir():
        est_tok = _as_tokenizer(est_dir / TOKENIZER_DIR, "estimator")
    elif config.tokenizer:
        est_tok = _as_tokenizer(config.tokenizer, "estimator")
    else:
        raise ValueError(
            f"the progress estimator in {str(est_dir)!r} records no tokenizer, so its vocabulary cannot be checked; "
            "retrain with --tokenizer <policy tokenizer> (or save one into its tokenizer/ folder)"
        )
    pol_tok = _as_tokenizer(policy_tokenizer, "policy")
    est_vocab, pol_vocab = est_tok.get_vocab(), pol_tok.get_vocab()
    if est_vocab != pol_vocab:
        diffs = []
        for token in sorted(set(est_vocab) | set(pol_vocab), key=str):
            a, b = est_vocab.get(token), pol_vocab.get(token)
            if a != b:
                diffs.append(f"{token!r}: estimator {a}, policy {b}")
                if len(diffs) == 5:
                    break
        raise ValueError(
            f"tokenizer mismatch: the progress estimator ({str(est_dir)!r}, {len(est_vocab)} tokens) and the policy "
            f"({getattr(pol_tok, 'name_or_path', '?')}, {len(pol_vocab)} tokens) map tokens to different ids, e.g. "
            + "; ".join(diffs)
            + ". The estimator reads the policy's token ids directly: train it on the policy's tokenizer."
        )
    rows = (config.backbone_config or {}).get("vocab_size")
    if rows is not None and pol_vocab and max(pol_vocab.values()) >= int(rows):
        raise ValueError(
            f"the policy tokenizer uses ids up to {max(pol_vocab.values())} but the estimator backbone has only "
            f"{rows} embeddings"
        )


__all__ = [
    "ProgressScorer",
    "check_estimator_layout",
    "check_estimator_objective",
    "estimator_layout",
    "ProgressScorerActor",
    "check_tokenizer_compatible",
    "record_item",
    "get_progress_scorer",
    "resolve_estimator_dir",
]
