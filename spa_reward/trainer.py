"""The ``spa`` v1 trainer mode: verl's synchronous PPO trainer plus the per-turn inputs our estimators need, and
the rule that an episode which ended by env failure is not data.

Select it with ``trainer.v1.trainer_mode=spa``. It is registered lazily: ``spa_reward.register`` imports this
module only when verl imports ``verl.trainer.ppo.v1`` (where ``get_trainer_cls`` lives).

Per-turn inputs. verl 0.9.1's ``_compute_advantage`` hands a custom estimator only rewards, response_mask, uid and
config. This mode fetches the extra rollout fields the ``env_agent`` loop stores in TransferQueue
(``turn_anchors``, ``episode_reward``, ``episode_info``; ``values`` when a critic runs) and exposes them to the
estimators through ``spa_reward.advantage.estimator_inputs`` while verl's own advantage step runs unchanged
(KL-in-reward, rollout correction and the write-back stay verl's).

Per-step rows. The TransferQueue key of a row, ``{uid}_{session_id}_{index}``, says which rows form one episode
(:func:`session_layout`); the estimators get ``sessions``/``step_index`` and treat a session's rows as one
trajectory ordered by index, so an episode split into per-step rows gets the advantages it would get packed in one
row. Episode metrics and the failure share count each session once (its last row).

Env failures and padding. A row is *not data* when it is one of verl's padding rows (tag ``is_padding``, appended by
``trainer/ppo/padding_utils.upsample_batch_to_divisible_size`` as copies of row 0 with a zero response mask) or an
episode that ended by env failure (``episode_info["env_failed"]``). For every estimator such rows

* take no part in any group statistic: ours get ``row_mask`` (see ``spa_reward.advantage``); for verl's built-in
  ``grpo`` (``core_algos.compute_grpo_outcome_advantage``, called directly by ``ray_trainer.compute_advantage``)
  each failed row gets a uid of its own for the duration of the advantage step, so it is a group of one and its
  siblings' mean/std are computed without it; for ``gae`` the zeroed response mask keeps it out of the whitening;
* carry no loss: ``response_mask`` and ``loss_mask`` of failed rows are zeroed in TransferQueue before the
  advantage step (exactly what verl does to padding rows), and ``advantages``/``returns`` are 0;
* are left out of the ``episode/*`` metrics (counted as ``episode/env_failures``, ``episode/env_failure_share``) and
  of verl's own data metrics (``_compute_metrics`` sees failed rows tagged like padding).

If more than ``algorithm.max_env_failure_share`` (default 0.5) of a batch's real episodes failed, the run stops
with the env errors listed (:class:`EnvFailureShareExceeded`).

Lone survivors. When env failures leave a uid group with fewer than two real episodes, the survivor has nothing to
be compared with: verl's GRPO would treat it as a group of one (mean 0, std 1, so A = R next to normalised
siblings) and ours would return its raw score. Such an episode (:func:`lone_survivors`) gets advantage 0 under
every group-relative estimator (everything but ``gae``, ``reinforce_plus_plus``, ``remax`` and ``spa`` with a
critic, whose baseline is not the group); it keeps its loss mask. Counted as ``episode/lone_survivors``. A group of
one by design (``rollout.n=1``) is not a lone survivor and keeps the estimator's convention.

Validation size. ``data.val_tasks`` = N: each validation plays a fixed subset of N tasks of ``data.val_files``
(:func:`validation_subset`: seed :data:`VAL_SUBSET_SEED`, independent of ``data.seed``, so every run validates on
the same tasks); the whole file when it holds N or fewer, or when ``data.val_tasks`` is null. verl's own
``_validate`` plays the whole validation dataloader (``data.val_batch_size`` only sets its chunk size).

Start-up. :meth:`SpaTrainer.init` runs the registered start-up checks (the recipe registers one that builds one env
with the run's env settings, so a bad data dir or a missing engine fails before any worker or GPU exists) and then
:meth:`SpaTrainer._start_services` (the hook where long-lived services such as the progress scorer are created)
before verl's own ``init``.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
import torch
import transfer_queue as tq
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.v1 import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils.tensordict_utils import list_of_dict_to_tensordict

from spa_reward.advantage import estimator_inputs
from spa_reward.config_check import ConfigError, select_key, validate_config
from spa_reward.layout import session_key
from spa_reward.metrics import episode_metrics, is_env_failure
from spa_reward.startup import run_startup_checks

logger = logging.getLogger(__name__)

TURN_ESTIMATORS = ("spa", "gigpo")  # estimators that read the extra per-turn fields
# estimators whose baseline is not the uid group (a critic, the batch, a greedy rollout): lone survivors keep theirs
GROUP_FREE_ESTIMATORS = ("gae", "reinforce_plus_plus", "remax")
MAX_FAILURE_SHARE_KEY = "algorithm.max_env_failure_share"
DEFAULT_MAX_FAILURE_SHARE = 0.5
MAX_LISTED_ERRORS = 10
VAL_SUBSET_SEED = 0  # the validation subset is the same for every run (not data.seed)

# ------------------------------------------------------------------------------------------- helpers


def column(data: Any, name: str) -> list:
    """A TransferQueue/TensorDict column as a plain Python list (tensor or non-tensor stack)."""
    value = data[name]
    if isinstance(value, torch.Tensor):
        if value.is_nested:
            return [t.tolist() for t in value.unbind()]
        return value.tolist()
    value = value.tolist() if hasattr(value, "tolist") else value
    return [list(v) if type(v).__name__ == "LinkedList" else v for v in value]


def session_layout(keys: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Which rows form one episode: verl's TransferQueue keys are ``{uid}_{session_id}_{index}``
    (``trainer/ppo/v1/agent_loop_tq.py`` ``_agent_loop_postprocess``), one row per agent-loop output; an agent loop
    that emits one output per step gives a session several rows, ordered by index.

    Returns sessions (bs,) ``{uid}_{session_id}``, step_index (bs,) int and final (bs,) bool (the session's last
    row). A key of another shape is a session of its own."""
    parsed = [session_key(key) for key in keys]
    sessions, steps = [s for s, _ in parsed], [i for _, i in parsed]
    step_index = np.asarray(steps, dtype=np.int64)
    last = pd.Series(step_index).groupby(pd.Series(sessions, dtype=object)).transform("max").to_numpy()
    return sessions, step_index, step_index == last


def row_flags(tags: list[dict], infos: list, sessions: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(padding, failed), each (bs,) bool: verl's padding rows, and rows of real episodes that ended by env failure
    (with ``sessions``, every row of a session with a failed row)."""
    padding = np.array([bool(t.get("is_padding", False)) for t in tags], dtype=bool)
    failed = np.array([isinstance(i, dict) and is_env_failure(i) for i in infos], dtype=bool) & ~padding
    if sessions is not None and failed.any():
        failed = pd.Series(failed).groupby(pd.Series(sessions, dtype=object)).transform("max").to_numpy() & ~padding
    return padding, failed


def lone_survivors(uids: list, sessions: list[str], padding: np.ndarray, failed: np.ndarray) -> np.ndarray:
    """(bs,) bool: the rows of real episodes that are the only real episode left in a uid group that had two or
    more (the others ended by env failure). A session (window layout: several rows) is one episode; verl's padding
    rows count for nothing."""
    frame = pd.DataFrame({"uid": pd.Series(uids, dtype=object), "session": pd.Series(sessions, dtype=object),
                          "failed": failed})[~padding]
    per_session = frame.groupby("session", sort=False).agg(uid=("uid", "first"), failed=("failed", "max"))
    groups = per_session.groupby("uid", sort=False)["failed"].agg(total="size", failed="sum")
    lone_uids = groups.index[(groups["total"] >= 2) & (groups["total"] - groups["failed"] == 1)]
    out = np.zeros(len(uids), dtype=bool)
    if len(lone_uids):
        out = pd.Series(uids, dtype=object).isin(set(lone_uids)).to_numpy() & ~padding & ~failed
    return out


def validation_subset(total: int, n: int | None, seed: int = VAL_SUBSET_SEED) -> list[int] | None:
    """Row indices (ascending) of the fixed validation subset: ``n`` of ``total`` drawn without replacement by
    numpy's generator seeded with ``seed``; None (every row) when ``n`` is None or ``n >= total``."""
    if n is None or n >= total:
        return None
    return sorted(np.random.default_rng(seed).choice(total, size=int(n), replace=False).tolist())


class EnvFailureShareExceeded(RuntimeError):
    """Too many episodes of one batch ended by env failure: the run stops instead of training on the rest."""


def failure_share_problem(infos: list, keys: list[str], padding: np.ndarray, failed: np.ndarray,
                          limit: float) -> str | None:
    """The error message when the share of failed real episodes exceeds ``limit``, else None."""
    real = int((~padding).sum())
    n_failed = int(failed.sum())
    if real == 0 or n_failed / real <= limit:
        return None
    errors: Counter = Counter()
    example: dict[str, str] = {}
    for info, key, bad in zip(infos, keys, failed):
        if bad:
            text = str(info.get("env_error_text") or info.get("env_error") or "unknown env failure")
            errors[text] += 1
            example.setdefault(text, key)
    listed = "\n".join(f"  - {n}x {text} (e.g. {example[text]})" for text, n in errors.most_common(MAX_LISTED_ERRORS))
    more = len(errors) - MAX_LISTED_ERRORS
    if more > 0:
        listed += f"\n  - ... and {more} other errors"
    return (
        f"{n_failed} of {real} episodes in this batch ({n_failed / real:.0%}) ended by env failure, more than "
        f"{MAX_FAILURE_SHARE_KEY}={limit}; stopping the run instead of training on the rest. Env errors:\n{listed}\n"
        "Fix the environment (data dir, engine, env.pool.step_timeout / reset_timeout) or raise "
        f"{MAX_FAILURE_SHARE_KEY} (1.0 never stops)."
    )


def max_failure_share(config: Any) -> float:
    """``algorithm.max_env_failure_share`` in [0, 1] (default 0.5); a ConfigError names a bad value."""
    value = select_key(config, MAX_FAILURE_SHARE_KEY, DEFAULT_MAX_FAILURE_SHARE)
    try:
        share = float(value)
    except (TypeError, ValueError):
        share = float("nan")
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"{MAX_FAILURE_SHARE_KEY}={value!r} must be a number in [0, 1] (the largest share of a "
                          "batch's episodes that may end by env failure before the run stops; default 0.5)")
    return share


# ------------------------------------------------------------------------------------------- trainer


@register_trainer("spa")
class SpaTrainer(PPOTrainerSync):
    """Behaves exactly like ``sync`` (same replay buffer and weight sync), plus the per-turn estimator inputs and
    the env-failure rules of the module docstring."""

    def __init__(self, config):
        validate_config(config)
        self.max_env_failure_share = max_failure_share(config)
        super().__init__(config)

    # verl branches on ``trainer_mode == "sync"`` in several places; this mode must take the sync branches.
    @property
    def trainer_mode(self) -> str:
        return "sync"

    @trainer_mode.setter
    def trainer_mode(self, value: str) -> None:
        if value not in ("spa", "sync"):
            raise ValueError(f"SpaTrainer runs as trainer.v1.trainer_mode=spa, got {value!r}")

    # ---------------------------------------------------------------------------------- start-up

    def init(self):
        """Start-up checks and services first (CPU only, seconds), then verl's init (workers, GPUs)."""
        run_startup_checks(self.config)  # spa_reward.startup (the recipe's env check is registered there)
        self._start_services()
        super().init()

    def _init_dataloader(self):
        """verl's dataloaders, then the validation dataset cut to its fixed subset (``data.val_tasks``); the
        validation dataloader reads the dataset's rows when it iterates, so it plays the subset."""
        super()._init_dataloader()
        n = select_key(self.config, "data.val_tasks")
        total = len(self.val_dataset)
        keep = validation_subset(total, n)
        if keep is not None:
            self.val_dataset.dataframe = self.val_dataset.dataframe.select(keep)
        logger.info("validation plays %d of the %d tasks of %s (data.val_tasks=%s) x val_kwargs.n episodes",
                    len(self.val_dataset), total, self.config.data.val_files, n)

    # ---- step-reward service (spa_reward.steprm.trainer_hooks) ----
    def _start_services(self):
        """Create the scorer / step-reward service actor the run needs (idempotent), before any worker exists, so
        its failures (tokenizer mismatch, unschedulable GPUs) surface at start-up with a clear error."""
        if getattr(self, "_steprm", None) is None:
            from spa_reward.steprm.trainer_hooks import StepRewardHooks

            hooks = StepRewardHooks(self.config, getattr(self, "tokenizer", None))
            if hooks.active and hooks.tokenizer is None:  # before verl's _setup: load the policy's tokenizer now
                self._init_tokenizer()  # (verl's _setup loads it again) so the service's tokenizer check runs
                hooks.tokenizer = self.tokenizer
            hooks.start()
            self._steprm = hooks
        return self._steprm

    def _load_checkpoint(self):
        steprm = self._start_services()
        super()._load_checkpoint()
        if self.global_steps > 0 and steprm.trains:
            mode = self.config.trainer.resume_mode
            step_dir = (self.config.trainer.resume_from_path if mode == "resume_path" else
                        os.path.join(os.path.abspath(self.config.trainer.default_local_dir),
                                     f"global_step_{self.global_steps}"))
            steprm.load(step_dir)

    def _save_checkpoint(self):
        steprm = getattr(self, "_steprm", None)
        if steprm is not None:  # before verl writes latest_checkpointed_iteration.txt
            steprm.save(os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}"))
        out = super()._save_checkpoint()
        if steprm is not None and steprm.trains:  # verl's rotation removed old actor/ folders: their steprm/ too
            from spa_reward.steprm.trainer_hooks import prune_rotated_states

            prune_rotated_states(self.config.trainer.default_local_dir, self.global_steps)
        return out
    # ---- end step-reward service ----

    # ---------------------------------------------------------------------------------- advantage

    def _max_share(self) -> float:
        share = getattr(self, "max_env_failure_share", None)
        return max_failure_share(self.config) if share is None else share

    def _compute_advantage(self, batch, metrics: dict):
        steprm = getattr(self, "_steprm", None)
        if steprm is not None:  # istar: + beta*q_t on rm_scores (pre-update weights); online: one service update
            steprm.on_batch(batch, metrics)
        estimator = self.config.algorithm.adv_estimator
        fields = ["episode_info", "uid"]
        if estimator in TURN_ESTIMATORS:
            fields += ["turn_anchors", "episode_reward"]
        want_values = estimator == "spa" and self.use_critic
        if want_values:
            fields.append("values")
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        missing = [f for f in fields if f not in data.keys()]
        if missing:
            raise RuntimeError(
                f"trainer_mode=spa needs the rollout fields {missing}, which the env_agent agent loop writes "
                "(dataset column agent_name=env_agent); this batch was produced by another agent loop."
            )
        infos = column(data, "episode_info")
        sessions, step_index, final = session_layout(batch.keys)
        padding, failed = row_flags(batch.tags, infos, sessions)
        episodes = final & ~padding  # one row per real episode (its last step) for metrics and the failure share
        metrics.update(episode_metrics([i for i, ep in zip(infos, episodes) if ep]))
        problem = failure_share_problem(infos, batch.keys, ~episodes, failed & episodes, self._max_share())
        if problem:
            raise EnvFailureShareExceeded(problem)

        inputs: dict[str, Any] = {"row_mask": ~(padding | failed), "sessions": sessions, "step_index": step_index}
        if estimator in TURN_ESTIMATORS:
            inputs["turn_anchors"] = np.array(column(data, "turn_anchors") + [None], dtype=object)[:-1]
            inputs["episode_rewards"] = np.asarray(column(data, "episode_reward"), dtype=np.float64)
        if want_values:
            inputs["values"] = data.to_padded_tensor()["values"] if hasattr(data, "to_padded_tensor") else data["values"]

        lone = lone_survivors(column(data, "uid"), sessions, padding, failed)
        metrics["episode/lone_survivors"] = float((lone & final).sum())
        group_free = estimator in GROUP_FREE_ESTIMATORS or want_values
        zero_keys = [k for k, z in zip(batch.keys, failed | (lone & (not group_free))) if z]
        failed_keys = [k for k, bad in zip(batch.keys, failed) if bad]
        uids = None
        if failed_keys:
            uids = self._mask_failed_rows(batch.partition_id, failed_keys, isolate=estimator not in TURN_ESTIMATORS)
        try:
            with estimator_inputs(**inputs):
                batch = super()._compute_advantage(batch, metrics)
        finally:
            if uids is not None:  # give the failed rows their real uid back
                tq.kv_batch_put(keys=failed_keys, partition_id=batch.partition_id,
                                fields=list_of_dict_to_tensordict([{"uid": u} for u in uids]))
        if zero_keys:  # failed rows and lone survivors: advantage 0
            zeros = [{"advantages": torch.zeros(len(m), dtype=torch.float32), "returns": torch.zeros(len(m))}
                     for m in self._masks(batch.partition_id, zero_keys)]
            tq.kv_batch_put(keys=zero_keys, partition_id=batch.partition_id, fields=list_of_dict_to_tensordict(zeros))
        return batch

    @staticmethod
    def _masks(partition_id: str, keys: list[str]) -> list[torch.Tensor]:
        got = tq.kv_batch_get(keys=keys, partition_id=partition_id, select_fields=["response_mask"])["response_mask"]
        return list(got.unbind()) if getattr(got, "is_nested", False) else list(got)

    def _mask_failed_rows(self, partition_id: str, keys: list[str], isolate: bool) -> list | None:
        """Zero ``response_mask``/``loss_mask`` of failed rows in TransferQueue (no loss, out of gae's whitening);
        with ``isolate``, also give each its own uid (out of verl's grpo group statistics). Returns the real uids
        to restore, or None."""
        rows = [{"response_mask": torch.zeros_like(m), "loss_mask": torch.zeros_like(m)}
                for m in self._masks(partition_id, keys)]
        uids = None
        if isolate:
            uids = column(tq.kv_batch_get(keys=keys, partition_id=partition_id, select_fields=["uid"]), "uid")
            for row, key in zip(rows, keys):
                row["uid"] = f"env_failed/{key}"  # a group of one
        tq.kv_batch_put(keys=keys, partition_id=partition_id, fields=list_of_dict_to_tensordict(rows))
        return uids

    # ---------------------------------------------------------------------------------- metrics

    def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        """verl's metrics with env-failed rows treated like padding (left out of the data metrics)."""
        infos = column(tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id,
                                       select_fields=["episode_info"]), "episode_info")
        _, failed = row_flags(batch.tags, infos, session_layout(batch.keys)[0])
        if failed.any():
            tags = []
            for tag, bad in zip(batch.tags, failed):
                tag = dict(tag)
                if bad:
                    tag["is_padding"] = True
                    for name in ("min_global_steps", "max_global_steps"):  # verl builds an int array of these
                        if tag.get(name) is None:
                            tag[name] = tag.get("global_steps", global_steps)
                tags.append(tag)
            batch = KVBatchMeta(keys=list(batch.keys), tags=tags, partition_id=batch.partition_id,
                                fields=batch.fields, extra_info=batch.extra_info)
        return super()._compute_metrics(batch, metrics, timing_raw, global_steps, epoch)
