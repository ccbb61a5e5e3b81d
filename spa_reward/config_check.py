"""Start-up checks of a composed spa-rl trainer config: every problem found, in one error.

``validate_config(cfg)`` is called by the ``spa`` trainer mode before training starts; the recipe's ``env`` block check
(``recipe.spa.settings``) is added with :func:`register_config_check` and the ``spa`` reward manager checks its checkpoint itself.
It raises :class:`ConfigError` (a ``ValueError``) listing, one per line, each problem and the key to set:

* unknown environment / reply style / reward mode / env pool backend (``env.*``);
* unknown reward (``algorithm.reward``: outcome | spa | istar | stepagent), a ``reward.reward_manager.name`` that
  disagrees with it,
  an advantage estimator verl does not know (``algorithm.adv_estimator``);
* step-reward service settings that cannot build (``algorithm.istar.*``, ``algorithm.spa.online.*``,
  ``algorithm.stepagent.*`` of modes implicit / irl);
* ``algorithm.reward=stepagent``: the ``algorithm.stepagent`` block (``StepAgentSettings.problems``);
* ``algorithm.reward=spa`` without a progress-estimator path (``algorithm.spa.estimator_path``);
* when files are checked, the files the run reads that are not there yet (:func:`missing_files`, each with the
  command that makes it): the estimator checkpoint, the expert demonstrations, the dataset parquets
  (``data.train_files`` / ``data.val_files``); ``recipe.spa.check --no-files`` (``DRY_RUN``) lists them instead;
* settings the dense per-turn rewards cannot work with: the legacy trainer (``trainer.use_v1=false``) or a
  colocated reward model (``reward.reward_model.enable=true``), which both rebuild ``rm_scores`` from one scalar;
* reward and advantage values out of range (:func:`value_problems`): NaN/inf or negative ``algorithm.spa.alpha`` /
  ``beta`` / ``algorithm.invalid_penalty``, ``algorithm.spa.clip <= 0``, unknown ``algorithm.spa.mode`` /
  ``algorithm.gigpo.mode``, ``algorithm.gamma`` outside (0, 1], ``algorithm.lam`` outside [0, 1];
* GPU splits verl cannot run (:func:`gpu_split_problems`): trainer GPUs not divisible by the rollout's tensor
  parallel size, or a PPO mini-batch (``ppo_mini_batch_size * rollout.n``) not divisible by the data-parallel size;
  the message names the valid choices.

:func:`config_warnings` lists settings that run but are known to go wrong (e.g. the paper's grounding bonus, which
the learning benchmark shows a policy can farm); the check prints them and the trainer logs them, nothing stops.

``python -m recipe.spa.check <hydra overrides>`` composes the config the launch scripts would run and prints these
problems before anything starts.

Layering: this module is on the ``spa_reward`` floor and never imports the recipe nor the composition root
(``spa_reward.register``, the floor above the recipe); the recipe's checks arrive through :func:`register_config_check`
when the root loads (verl loads it on ``import verl``).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Callable

logger = logging.getLogger(__name__)

REWARDS = ("outcome", "spa", "istar", "stepagent")
REMOTE_PREFIXES = ("hdfs://", "s3://", "gs://", "http://", "https://")


class ConfigError(ValueError):
    """One or more problems in a spa-rl config; the message lists them all."""


_CHECKS: list[Callable[[Any], list[str]]] = []


def register_config_check(fn: Callable[[Any], list[str]]) -> Callable[[Any], list[str]]:
    """Add ``fn(cfg) -> [problem, ...]`` to :func:`config_problems` (the recipe registers its ``env`` block check
    this way, so this module never imports the recipe). Idempotent."""
    if fn not in _CHECKS:
        _CHECKS.append(fn)
    return fn


def select_key(cfg: Any, path: str, default: Any = None) -> Any:
    """``cfg.a.b`` for ``path='a.b'`` on a DictConfig/dict/object; ``default`` when missing, None or unresolvable."""
    node = cfg
    for key in path.split("."):
        if node is None:
            return default
        try:
            node = node.get(key, None) if hasattr(node, "get") else getattr(node, key, None)
        except Exception:  # an unresolvable interpolation reads as missing
            return default
    return default if node is None else node


def spa_objective(cfg: Any) -> str:
    """The run's progress-estimator objective (``algorithm.spa.objective``; missing = ``fusion.DEFAULT_OBJECTIVE``)."""
    from spa_reward.fusion import DEFAULT_OBJECTIVE

    return str(select_key(cfg, "algorithm.spa.objective", DEFAULT_OBJECTIVE))


def block_values(cfg: Any, block: str, cls: type) -> dict[str, Any]:
    """The keys of config block ``block`` (e.g. ``algorithm.stepagent``) that name a field of dataclass ``cls`` and
    are set (not None): ``cls(**block_values(...))`` keeps the defaults of the rest."""
    import dataclasses

    values = {}
    for f in dataclasses.fields(cls):
        value = select_key(cfg, f"{block}.{f.name}")
        if value is not None:
            values[f.name] = value
    return values


def _files(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def config_problems(cfg: Any, check_files: bool = True) -> list[str]:
    """Every problem of a composed trainer config (see the module docstring); [] when it is fine."""
    problems: list[str] = []

    # checks registered by the floor above (the recipe's env block) through the composition root
    # (spa_reward.register), which verl loads as its plug-in on `import verl`; this module never imports it
    import verl  # noqa: F401

    if not _CHECKS:
        problems.append("the recipe's config checks are not registered: the composition root spa_reward.register "
                        "registers them and verl loads it on `import verl` (entry point verl.plugins: spa_rl); with "
                        "VERL_USE_EXTERNAL_PLUGINS=none set VERL_USE_EXTERNAL_MODULES=spa_reward.register")
    for check in _CHECKS:
        problems += check(cfg)

    # reward
    reward = select_key(cfg, "algorithm.reward")
    if reward not in REWARDS:
        problems.append(f"algorithm.reward={reward!r} is not one of {REWARDS}")
    source = select_key(cfg, "reward.reward_manager.source", "register")
    manager = select_key(cfg, "reward.reward_manager.name")
    if source == "register":
        import spa_reward.reward_manager  # noqa: F401  (registers outcome/spa)
        from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER

        if manager not in REWARD_MANAGER:
            problems.append(f"reward.reward_manager.name={manager!r} is not a registered reward manager "
                            f"(known: {', '.join(sorted(REWARD_MANAGER))})")
        elif reward in REWARDS and manager != reward:
            problems.append(f"reward.reward_manager.name={manager!r} disagrees with algorithm.reward={reward!r}; "
                            "leave reward.reward_manager.name at ${algorithm.reward}")
    if reward == "spa":
        from spa_reward.reward_manager import ESTIMATOR_HELP, RewardSettings

        if not RewardSettings.from_config(cfg).estimator_path:
            problems.append(f"algorithm.reward=spa needs a progress estimator checkpoint: {ESTIMATOR_HELP}")

    if reward == "stepagent":
        problems += stepagent_problems(cfg)

    # step-reward service (istar / online spa / stepagent implicit, irl): its settings must build
    if reward in ("istar", "spa", "stepagent"):
        from spa_reward.steprm.trainer_hooks import plan_problems

        problems += plan_problems(cfg)

    # advantage estimator
    estimator = select_key(cfg, "algorithm.adv_estimator")
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    try:
        get_adv_estimator_fn(estimator)
    except (ValueError, KeyError):
        from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY

        problems.append(f"algorithm.adv_estimator={estimator!r} is not a registered advantage estimator "
                        f"(known: {', '.join(sorted(map(str, ADV_ESTIMATOR_REGISTRY)))})")

    # files the run reads: estimator checkpoint, expert demonstrations, dataset parquets
    if check_files:
        problems += missing_files(cfg)

    problems += value_problems(cfg)
    problems += gpu_split_problems(cfg)

    # dense per-turn rewards need the v1 trainer and the streaming reward path
    if select_key(cfg, "trainer.use_v1", True) is False:
        problems.append("trainer.use_v1=false: the legacy trainer rebuilds rm_scores from one scalar per "
                        "trajectory, which loses the per-turn rewards; use the v1 trainer (trainer.use_v1=true)")
    if select_key(cfg, "reward.reward_model.enable", False):
        problems.append("reward.reward_model.enable=true: a colocated reward model overwrites the per-turn "
                        "rm_scores; the progress estimator runs as its own Ray actor, keep this false")
    return problems


def stepagent_problems(cfg: Any) -> list[str]:
    """The ``algorithm.stepagent`` block's problems (its expert file: :func:`missing_files`)."""
    from spa_reward.stepagent.settings import StepAgentSettings

    return StepAgentSettings.from_config(cfg).problems()


def _local_missing(path: Any, expand_user: bool = False) -> bool:
    """A local path (not hdfs:// etc.) that is not there (``~`` expanded only where the reader expands it)."""
    if not path or str(path).startswith(REMOTE_PREFIXES):
        return False
    return not os.path.exists(os.path.expanduser(str(path)) if expand_user else str(path))


def missing_files(cfg: Any) -> list[str]:
    """The local files the run reads that are not there yet, each with the command that makes it (one line each):
    the progress-estimator checkpoint (``algorithm.reward=spa``), the expert demonstrations
    (``algorithm.reward=stepagent``) and the dataset parquets (``data.train_files`` / ``data.val_files``).
    A real launch stops on them (:func:`config_problems`); ``DRY_RUN`` lists them as not there yet."""
    env = select_key(cfg, "env.name", "<env>")
    out = []
    reward = select_key(cfg, "algorithm.reward")
    if reward == "spa":
        from spa_reward.reward_manager import RewardSettings

        path = RewardSettings.from_config(cfg).estimator_path
        if path and not os.path.isdir(path):
            out.append(f"algorithm.spa.estimator_path={path!r} does not exist (the progress estimator): make it "
                       f"with `bash examples/collect.sh {env}` (exploration records) then `bash "
                       f"examples/train_estimator.sh {env}` (writes $ESTIMATOR_DIR/{env}), or point ESTIMATOR / "
                       "algorithm.spa.estimator_path at one")
    if reward == "stepagent":
        from spa_reward.stepagent.settings import StepAgentSettings

        path = StepAgentSettings.from_config(cfg).expert_path
        if _local_missing(path):
            out.append(f"algorithm.stepagent.expert_path={path!r} does not exist (the expert demonstrations): write "
                       f"them with `bash examples/prepare_data.sh {env}` (python -m envs.expert {env} --output "
                       f"$DATA_DIR/{env}_sft.parquet) or point EXPERT / algorithm.stepagent.expert_path at them")
    for key in ("data.train_files", "data.val_files"):
        for path in _files(select_key(cfg, key)):
            if _local_missing(path, expand_user=True):
                out.append(f"{key}: {path!r} does not exist (the task dataset): write it with "
                           f"`bash examples/prepare_data.sh {env}` (python -m envs.prepare {env} --output-dir "
                           "$DATA_DIR) and set DATA_DIR to that folder")
    return out


def _number(value: Any) -> float | None:
    """``value`` as a float, None when it is not a number (then the caller reports it)."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def value_problems(cfg: Any) -> list[str]:
    """Reward / advantage settings out of range, each with its key and value."""
    from spa_reward.fusion import DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_GROUNDING, GROUNDING_FORMS

    out = []
    for key, default in (("algorithm.spa.alpha", DEFAULT_ALPHA), ("algorithm.spa.beta", DEFAULT_BETA),
                         ("algorithm.invalid_penalty", 0.0)):
        raw = select_key(cfg, key, default)
        value = _number(raw)
        if value is None or not math.isfinite(value) or value < 0:
            out.append(f"{key}={raw!r} must be a finite number >= 0")
    for key in ("algorithm.spa.outcome_coef", "algorithm.spa.step_advantage_w", "algorithm.gigpo.step_advantage_w"):
        raw = select_key(cfg, key, 0.0)
        value = _number(raw)
        if value is None or not math.isfinite(value):
            out.append(f"{key}={raw!r} must be a finite number")
    raw = select_key(cfg, "algorithm.max_env_failure_share", 0.5)
    value = _number(raw)
    if value is None or not 0.0 <= value <= 1.0:
        out.append(f"algorithm.max_env_failure_share={raw!r} must be a number in [0, 1] (the largest share of a "
                   "batch's episodes that may end by env failure before the run stops)")
    clip = select_key(cfg, "algorithm.spa.clip")
    if clip is not None:
        value = _number(clip)
        if value is None or math.isnan(value) or value <= 0:
            out.append(f"algorithm.spa.clip={clip!r} must be > 0 (or null for no clip)")
    from spa_reward.steprm.objectives import PROGRESS_OBJECTIVES

    grounding = select_key(cfg, "algorithm.spa.grounding", DEFAULT_GROUNDING)
    if grounding not in GROUNDING_FORMS:
        out.append(f"algorithm.spa.grounding={grounding!r} is not one of {GROUNDING_FORMS}")
    objective = spa_objective(cfg)
    if objective not in PROGRESS_OBJECTIVES:
        out.append(f"algorithm.spa.objective={objective!r} is not one of {PROGRESS_OBJECTIVES}")
    from spa_reward.advantage import NORM_MODES  # what the estimators accept

    for section in ("spa", "gigpo"):
        mode = select_key(cfg, f"algorithm.{section}.mode", "mean_norm")
        if mode not in NORM_MODES:
            out.append(f"algorithm.{section}.mode={mode!r} is not one of {NORM_MODES}")
    gamma = select_key(cfg, "algorithm.gamma", 1.0)
    value = _number(gamma)
    if value is None or not 0 < value <= 1:
        out.append(f"algorithm.gamma={gamma!r} must be in (0, 1] (the per-turn discount)")
    lam = select_key(cfg, "algorithm.lam", 1.0)
    value = _number(lam)
    if value is None or not 0 <= value <= 1:
        out.append(f"algorithm.lam={lam!r} must be in [0, 1]")
    val_tasks = select_key(cfg, "data.val_tasks")
    if val_tasks is not None and (isinstance(val_tasks, bool) or not isinstance(val_tasks, int) or val_tasks < 1):
        out.append(f"data.val_tasks={val_tasks!r} must be an integer >= 1 (tasks one validation plays, a fixed "
                   "subset of data.val_files) or null (every task of the file)")
    return out


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _int(cfg: Any, key: str, default: int) -> int:
    value = _number(select_key(cfg, key, default))
    return int(value) if value is not None and math.isfinite(value) else default


def gpu_split_problems(cfg: Any) -> list[str]:
    """GPU splits verl 0.9.1 refuses only at its first rollout or actor update, checked on the config.

    * the hybrid engine builds the rollout mesh over the trainer's GPUs: ``world % (tp * dp * pp) == 0``
      (``verl/workers/engine_workers.py``, rollout device mesh);
    * the trainer hands the actor (and critic) ``mini_batch_size = ppo_mini_batch_size * rollout.n`` trajectories
      (``verl/trainer/ppo/v1/trainer_base.py`` ``_update_actor``/``_update_critic``) and the worker asserts
      ``mini_batch_size % data_parallel_size == 0``, with data_parallel_size = world / ulysses_sequence_parallel_size
      (``engine_workers.py`` ``train_mini_batch``, ``engine/fsdp/transformer_impl.py``).
    world = ``trainer.n_gpus_per_node * trainer.nnodes``: the GPUs of verl's resource pool (in ``rl_spa.sh``,
    ``N_GPUS - SCORER_GPUS``; the progress scorer's GPUs are outside it).
    """
    per_node = _int(cfg, "trainer.n_gpus_per_node", 8)
    nnodes = _int(cfg, "trainer.nnodes", 1)
    world = per_node * nnodes
    if world < 1:
        return [f"trainer.n_gpus_per_node={per_node} x trainer.nnodes={nnodes} gives no trainer GPU"]
    scorer = 0.0
    if select_key(cfg, "algorithm.reward") == "spa":
        scorer = _number(select_key(cfg, "algorithm.spa.scorer_num_gpus", 0)) or 0.0
    where = (f"trainer.n_gpus_per_node={per_node}" + (f" x trainer.nnodes={nnodes}" if nnodes != 1 else "")
             + (f" (N_GPUS - SCORER_GPUS in rl_spa.sh; the scorer has {scorer:g})" if scorer else " (N_GPUS)"))
    out = []
    tp = _int(cfg, "actor_rollout_ref.rollout.tensor_model_parallel_size", 1)
    rdp = _int(cfg, "actor_rollout_ref.rollout.data_parallel_size", 1)
    pp = _int(cfg, "actor_rollout_ref.rollout.pipeline_model_parallel_size", 1)
    infer = max(tp, 1) * max(rdp, 1) * max(pp, 1)
    if world % infer:
        valid_tp = [t for t in _divisors(world) if world % (t * max(rdp, 1) * max(pp, 1)) == 0]
        out.append(f"{where}: {world} trainer GPUs are not divisible by the rollout's tensor x data x pipeline "
                   f"parallel size {tp} x {rdp} x {pp}; valid TP (actor_rollout_ref.rollout."
                   f"tensor_model_parallel_size) for {world} GPUs: {valid_tp}")
    n = _int(cfg, "actor_rollout_ref.rollout.n", 1)
    roles = [("actor", "actor_rollout_ref.actor")]
    if select_key(cfg, "critic.enable", False) is True:
        roles.append(("critic", "critic"))
    for role, prefix in roles:
        mini = _int(cfg, f"{prefix}.ppo_mini_batch_size", 1)
        sp = max(_int(cfg, f"{prefix}.ulysses_sequence_parallel_size", 1), 1)
        if world % sp:
            out.append(f"{where}: {world} trainer GPUs are not divisible by {prefix}.ulysses_sequence_parallel_size={sp}")
            continue
        dp = world // sp
        if (mini * n) % dp:
            gpus = [w for w in range(1, max(2 * world, 16) + 1)
                    if w % sp == 0 and (mini * n) % (w // sp) == 0 and w % infer == 0]
            total = [f"{g + scorer:g}" for g in gpus]
            hint = ""
            if scorer:
                n_all = world + scorer
                scorers = [f"{n_all - g:g}" for g in gpus if n_all - g > 0]
                hint = (f"; with the scorer's {scorer:g} that is N_GPUS in [{', '.join(total)}]"
                        + (f", or keep N_GPUS={n_all:g} with SCORER_GPUS in [{', '.join(scorers)}]" if scorers else ""))
            minis = [m for m in range(1, 4 * mini + 1) if (m * n) % dp == 0][:6]
            out.append(
                f"{where}: the {role}'s PPO mini-batch {prefix}.ppo_mini_batch_size={mini} x rollout.n={n} = "
                f"{mini * n} trajectories is not divisible by its data-parallel size {dp} (GPUs / sequence parallel "
                f"{sp}); " + (f"valid trainer GPU counts: {gpus}{hint}; or " if gpus else "")
                + f"ppo_mini_batch_size (MINI_BATCH) in {minis}...")
    return out


def config_warnings(cfg: Any) -> list[str]:
    """Settings that run but are known to go wrong, each naming its key and what to set instead ([] when none).

    The grounding warning reads what the ``spa`` reward manager will use (``RewardSettings.from_config``: the
    ``reward.reward_kwargs`` the yaml fills from ``algorithm.spa``, a missing key = ``spa_reward.fusion.SPA_DEFAULTS``),
    so it fires exactly when the run's effective grounding is the bonus with beta > 0."""
    out = []
    if select_key(cfg, "algorithm.reward") != "spa":
        return out
    from spa_reward.reward_manager import RewardSettings

    try:
        settings = RewardSettings.from_config(cfg)
    except (TypeError, ValueError):  # a value that is no number: config_problems names it
        return out
    beta = settings.beta
    if settings.grounding == "bonus" and math.isfinite(beta) and beta > 0:
        out.append(f"algorithm.spa.grounding=bonus with algorithm.spa.beta={beta:g}: a bonus on every executed step is "
                   "worth more than finishing wherever success ends the episode (the future bonuses stop), so the "
                   f"policy can learn not to finish; {GROUNDING_TRAP}. Set algorithm.spa.grounding=penalty (only "
                   "non-executed actions lose beta, the default, rl_spa.sh's) or algorithm.spa.beta=0")
    return out


# the learning benchmark's evidence for the grounding warning (README "What makes a learned step reward work")
GROUNDING_TRAP = ("the collapse was measured with a critic (the paper's PPO setting, rl_spa.sh SPA_CRITIC=1): on "
                  "the lock task of benchmarks/bench_learning.py --methods grounding (README \"What makes a learned "
                  "step reward work\") bonus 0.5 with a critic ends at 0.00 success with the learned c_t and 0.01 even "
                  "with a perfect c_t, against 1.00 with penalty 0.1; without a critic the spa estimator's group "
                  "normalisation mutes the bonus and it only slowed learning there")


def validate_config(cfg: Any, check_files: bool = True) -> None:
    """Raise :class:`ConfigError` listing every problem of ``cfg`` (nothing when it is fine); log the warnings of
    :func:`config_warnings`."""
    problems = config_problems(cfg, check_files=check_files)
    if problems:
        raise ConfigError("spa-rl config has " + (f"{len(problems)} problems" if len(problems) > 1 else "a problem")
                          + ":\n  - " + "\n  - ".join(problems))
    for warning in config_warnings(cfg):
        logger.warning("spa-rl config: %s", warning)


__all__ = ["ConfigError", "block_values", "config_problems", "config_warnings", "gpu_split_problems",
           "register_config_check", "select_key", "missing_files", "stepagent_problems", "validate_config",
           "value_problems"]
