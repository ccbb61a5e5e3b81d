"""``algorithm.reward=stepagent`` in the config: every mode composes and validates with spa (critic-free and with a
critic) and grpo; the service plans; the checks name the key (bad block, missing expert file with
``examples/prepare_data.sh``, a disagreeing reward manager, PRM settings); the run settings and the comparison keep
the modes apart (the comparison's ``run`` column is the experiment name, which carries ``stepagent-<mode>``)."""

from __future__ import annotations

import csv
import json

import pytest

from recipe.spa import check
from spa_reward.config_check import ConfigError, config_problems, validate_config
from spa_reward.steprm.trainer_hooks import service_plan
from tests.recipe.helpers import trainer_config

BASE = ("algorithm.reward=stepagent", "algorithm.stepagent.expert_path=/data/alfworld_sft.parquet")
CRITIC = ("critic.enable=true", "critic.model.path=/models/policy", "critic.ppo_micro_batch_size_per_gpu=1")


@pytest.mark.parametrize("mode", ["match", "implicit", "irl"])
@pytest.mark.parametrize("adv", ["spa", "spa+critic", "grpo"])
def test_every_mode_validates_with_spa_and_grpo(mode, adv):
    extra = CRITIC if adv == "spa+critic" else ()
    cfg = trainer_config(*BASE, f"algorithm.stepagent.mode={mode}", f"algorithm.adv_estimator={adv.split('+')[0]}",
                         *extra)
    assert cfg.reward.reward_manager.name == "stepagent"
    validate_config(cfg, check_files=False)


def test_service_plans():
    assert service_plan(trainer_config(*BASE)) is None  # match: no PRM
    implicit = service_plan(trainer_config(*BASE, "algorithm.stepagent.mode=implicit",
                                           "actor_rollout_ref.model.path=/models/policy"))
    assert implicit["kind"] == "stepagent_implicit" and implicit["num_gpus"] == 1
    s = implicit["settings"]
    assert (s["objective"], s["loss"], s["reference"], s["model_path"]) == ("implicit", "step_dpo", "frozen",
                                                                             "/models/policy")
    assert s["beta"] == 0.05 and s["lr"] == 1e-6 and s["replay_batches"] == 4 and s["online"]
    irl = service_plan(trainer_config(*BASE, "algorithm.stepagent.mode=irl", "algorithm.stepagent.irl_clip=2.5",
                                      "algorithm.stepagent.model_path=/models/disc", "algorithm.stepagent.num_gpus=2"))
    assert irl["kind"] == "stepagent_irl" and irl["num_gpus"] == 2.0
    s = irl["settings"]
    assert (s["objective"], s["loss"], s["reward_clip"], s["model_path"], s["head"]) == (
        "discriminator", "bce", 2.5, "/models/disc", "linear")


def test_problems_name_the_key():
    def problems(*overrides, check_files=False):
        return "\n".join(config_problems(trainer_config(*overrides), check_files=check_files))

    p = problems("algorithm.reward=stepagent")
    assert "algorithm.stepagent.expert_path is not set" in p and "prepare_data.sh" in p
    p = problems(*BASE, "algorithm.stepagent.mode=imitate", "algorithm.stepagent.prefix=random")
    assert "algorithm.stepagent.mode='imitate'" in p and "algorithm.stepagent.prefix='random'" in p
    p = problems(*BASE, "reward.reward_manager.name=istar")
    assert "reward.reward_manager.name='istar' disagrees with algorithm.reward='stepagent'" in p
    p = problems(*BASE, "algorithm.stepagent.mode=irl", "algorithm.stepagent.lr=-1")
    assert "algorithm.stepagent:" in p and "lr=-1.0 must be" in p
    p = problems(*BASE, "algorithm.stepagent.mode=irl", "algorithm.stepagent.irl_clip=0")
    assert "irl_clip=0.0 must be finite and > 0" in p
    with pytest.raises(ConfigError, match="algorithm.stepagent.irl_clip"):
        validate_config(trainer_config(*BASE, "algorithm.stepagent.irl_clip=inf"), check_files=False)


def test_check_refuses_a_missing_expert_file(tmp_path, capsys):
    data = []
    for split in ("train", "val"):
        (tmp_path / f"alfworld_{split}.parquet").write_bytes(b"")
        data.append(f"data.{split}_files={tmp_path}/alfworld_{split}.parquet")
    missing = tmp_path / "nope" / "alfworld_sft.parquet"
    args = ["algorithm.reward=stepagent", f"algorithm.stepagent.expert_path={missing}", *data]
    assert check.main(args) == 1
    err = capsys.readouterr().err
    assert f"algorithm.stepagent.expert_path='{missing}' does not exist" in err
    assert "examples/prepare_data.sh alfworld" in err and "1 problem" in err
    missing.parent.mkdir()
    missing.write_bytes(b"")
    assert check.main(args) == 0
    assert "reward=stepagent-match" in capsys.readouterr().err


def test_run_settings_and_comparison_keep_the_modes_apart(tmp_path, monkeypatch):
    from recipe.spa.compare import main as compare_main
    from tests.recipe.test_compare import EPISODES_A, _log_launch, _run

    settings = {m: check.run_settings(trainer_config(*BASE, f"algorithm.stepagent.mode={m}", "env=webshop"))
                for m in ("match", "irl")}
    assert settings["irl"]["reward_label"] == "stepagent-irl" and settings["match"]["reward"] == "stepagent"
    # one folder never holds two modes
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run_settings.json").write_text(json.dumps(settings["irl"]))
    (problem,) = check.folder_problems(folder / "run_settings.json", settings["match"])
    assert 'reward_label: "stepagent-irl" -> "stepagent-match"' in problem
    # a folder written before reward_label existed still resumes
    old = {k: v for k, v in settings["irl"].items() if k != "reward_label"}
    (folder / "run_settings.json").write_text(json.dumps(old))
    assert check.folder_problems(folder / "run_settings.json", settings["irl"]) == []
    root = tmp_path / "rl" / "webshop"
    runs = []
    for mode in ("match", "irl"):
        name = f"webshop_stepagent_stepagent-{mode}_spa"
        run_dir = _run(root, name, settings[mode], monkeypatch)
        _log_launch(run_dir, name, "metrics_1.jsonl", [0, 2], EPISODES_A, monkeypatch)
        runs.append(str(run_dir))
    assert compare_main([*runs, "--out", str(tmp_path / "cmp")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "cmp" / "comparison.csv", encoding="utf-8")))
    overall = [r["run"] for r in rows if r["group"] == "all"]  # one row per mode, named by it
    assert sorted(overall) == ["webshop_stepagent_stepagent-irl_spa", "webshop_stepagent_stepagent-match_spa"]
    assert "| webshop_stepagent_stepagent-irl_spa |" in (tmp_path / "cmp" / "comparison.md").read_text()
