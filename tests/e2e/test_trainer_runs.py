"""Every launch script through verl's real `main_ppo` on the CPU platform, asserting on what each run wrote.

Runs (session fixtures, each one launch of a script with PLATFORM=cpu: 2 tasks x 2 episodes, 2 steps, 3 env steps):
- `pipeline`: examples/cpu_pipeline.sh webshop = sft.sh -> collect.sh -> train_estimator.sh -> rl_spa.sh ->
  rl_grpo.sh (SAVE_FREQ=1) -> recipe.spa.compare (the README's one-command CPU job);
- `grpo_fresh`: `PLATFORM=cpu bash examples/rl_grpo.sh webshop` as on a fresh machine (empty data and output
  folders: the launch prepares its task set and builds its tiny model itself);
- `gigpo_alfworld_window`: rl_gigpo.sh alfworld HISTORY=2;
- `ppo_faulty`: rl_ppo.sh webshop (turn GAE, critic) on a task set where one task's env fails at reset once and in
  the middle of its episode once;
- `spa_window`: rl_spa.sh webshop HISTORY=2 with a window-layout estimator (frozen, c_t on every step's row);
- `spa_online_window`: SPA_ONLINE=1 rl_spa.sh webshop HISTORY=2 with a window-layout estimator;
- `istar` (SAVE_FREQ=1) and `istar_resumed` (its folder cut back to step 1, launched again), on tasks where every
  second episode is won (`faulty_env.AlternatingWebShop`), so that the PRM's trajectory DPO has pairs to learn from;
- `stepagent_match` (virtualhome), `stepagent_match_window` (webshop, HISTORY=2) and `stepagent_irl_window`
  (virtualhome, HISTORY=2);
- `eval_twice`: eval.sh on the grpo run's step-2 checkpoint (merged to HF by verl's model_merger), twice.

Layouts covered: full history for grpo, ppo, spa, istar, stepagent match; the window (HISTORY=2) for gigpo, spa
(frozen and online), stepagent match and irl. Not launched here: gigpo with full history, istar and stepagent irl
in the window, grpo in the window (accepted only with outcome rewards and no invalid penalty) and online spa with full
history; their layout code is the same as the runs above (tests/window covers it on verl's functions).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.e2e.conftest import TASKS, Run, Workspace
from spa_reward.steprm.trainer_hooks import ROLLING_DIR
from tests.e2e.faulty_env import FAULTY_TASK_ENV, WIN_DIR_ENV

pytestmark = pytest.mark.e2e

STEPS = (1, 2)


def train_metrics(run: Run) -> dict[int, dict]:
    m = run.check().metrics()
    assert set(STEPS) <= set(m), f"{run.name}: logged steps {sorted(m)}"
    return m


def assert_trained(run: Run, *keys: str) -> dict[int, dict]:
    """Both steps logged verl's timing, loss and our episode metrics (plus `keys`), with finite values."""
    m = train_metrics(run)
    for step in STEPS:
        for key in ("timing_s/gen", "timing_s/update_actor", "actor/pg_loss", "episode/success_rate",
                    "episode/num_turns", "episode/executable_rate", *keys):
            assert key in m[step], f"{run.name} step {step}: no {key} in {sorted(m[step])}"
            value = m[step][key]
            assert isinstance(value, (int, float)) and value == value, f"{run.name} {key}={value!r}"
    return m


def checkpoint_steps(run: Run) -> list[int]:
    ckpt = run.run_dir / "checkpoints"
    return sorted(int(p.name.split("_")[-1]) for p in ckpt.glob("global_step_*")
                  if (p / "actor" / "model_world_size_1_rank_0.pt").is_file())


# ------------------------------------------------------------------------------------------------------- runs


@pytest.fixture(scope="session")
def pipeline(workspace: Workspace) -> dict[str, Run]:
    workspace.prepare("webshop")
    run = workspace.script("pipeline", "cpu_pipeline.sh", "webshop", SAVE_FREQ="1").check()
    folders = {}
    for line in run.log.read_text(errors="replace").splitlines():
        if line.startswith("[spa-rl] run folder: "):
            path = Path(line.split(": ", 1)[1].strip())
            folders[path.name.split("_")[1]] = path
    return {algo: Run(algo, 0, run.log, folders[algo], run.seconds) for algo in ("spa", "grpo")} | {"all": run}


def data_with_env(workspace: Workspace, folder: str, env_class: str, rows: slice = slice(None)) -> tuple[Path, list[str]]:
    """A copy of the session's WebShop task set whose train rows ``rows`` play ``tests.e2e.faulty_env:<env_class>``;
    returns the folder and the task ids of those rows."""
    workspace.prepare("webshop")
    data = workspace.root / folder
    data.mkdir(exist_ok=True)
    for split in ("train", "val", "test"):
        shutil.copy(workspace.data / f"webshop_{split}.parquet", data / f"webshop_{split}.parquet")
    train = pd.read_parquet(data / "webshop_train.parquet")
    infos = [dict(i) for i in train["extra_info"]]
    picked = range(len(infos))[rows]
    for i in picked:
        infos[i]["env_name"] = f"tests.e2e.faulty_env:{env_class}"
    train["extra_info"] = infos
    train.to_parquet(data / "webshop_train.parquet")
    return data, [str(infos[i]["task_id"]) for i in picked]


@pytest.fixture(scope="session")
def grpo_fresh(workspace: Workspace) -> Run:
    """The issue's "done when" command on a fresh machine: no task set, no model, no output folder yet."""
    fresh = workspace.root / "fresh"
    return workspace.rl("grpo_fresh", "rl_grpo.sh", "webshop", prepare=False, DATA_DIR=str(fresh / "data"),
                        OUT_DIR=str(fresh / "out"))


@pytest.fixture(scope="session")
def gigpo_alfworld_window(workspace: Workspace) -> Run:
    workspace.prepare("alfworld", expert=False)
    return workspace.rl("gigpo_alfworld_h2", "rl_gigpo.sh", "alfworld", HISTORY="2")


@pytest.fixture(scope="session")
def ppo_faulty(workspace: Workspace) -> tuple[Run, str]:
    data, (faulty_task,) = data_with_env(workspace, "data_faulty", "FaultyWebShop", slice(0, 1))
    fault_dir = workspace.root / "faults"
    fault_dir.mkdir(exist_ok=True)
    run = workspace.rl("ppo_faulty", "rl_ppo.sh", "webshop", "env.allow_custom_env_classes=true",
                       DATA_DIR=str(data), RUN_NAME="faulty", SPA_E2E_FAULT_DIR=str(fault_dir),
                       **{FAULTY_TASK_ENV: faulty_task})
    return run, faulty_task


@pytest.fixture(scope="session")
def window_estimator(workspace: Workspace, pipeline) -> Path:
    out = workspace.out / "estimator_h2" / "webshop"
    workspace.script("estimator_h2", "train_estimator.sh", "webshop", "--layout", "window", "--history-length", "2",
                     "--output", str(out), "--overwrite").check()
    return out


@pytest.fixture(scope="session")
def spa_window(workspace: Workspace, window_estimator: Path) -> Run:
    return workspace.rl("spa_h2", "rl_spa.sh", "webshop", HISTORY="2", ESTIMATOR=str(window_estimator))


@pytest.fixture(scope="session")
def spa_online_window(workspace: Workspace, window_estimator: Path) -> Run:
    return workspace.rl("spa_online_h2", "rl_spa.sh", "webshop", HISTORY="2", SPA_ONLINE="1",
                        ESTIMATOR=str(window_estimator))


def istar_launch(workspace: Workspace, name: str, **extra: str) -> Run:
    data, _ = data_with_env(workspace, "data_alternating", "AlternatingWebShop")
    wins = workspace.root / f"wins_{name}"
    wins.mkdir(exist_ok=True)
    return workspace.rl(name, "rl_istar.sh", "webshop", "env.allow_custom_env_classes=true", SAVE_FREQ="1",
                        DATA_DIR=str(data), **{WIN_DIR_ENV: str(wins)}, **extra)


@pytest.fixture(scope="session")
def istar(workspace: Workspace) -> Run:
    return istar_launch(workspace, "istar")


@pytest.fixture(scope="session")
def istar_resumed(workspace: Workspace, istar: Run) -> Run:
    """The istar run's folder as if the run had stopped after step 1, launched again in a folder of its own."""
    istar.check()
    name = "resumed"
    source = istar.run_dir
    target = source.with_name(f"{source.name}_{name}")
    shutil.copytree(source, target)
    shutil.rmtree(target / "checkpoints" / "global_step_2")
    shutil.rmtree(target / "checkpoints" / ROLLING_DIR, ignore_errors=True)  # published after update 2
    (target / "checkpoints" / "latest_checkpointed_iteration.txt").write_text("1")
    for log in (target / "logs").glob("*.jsonl"):  # the stopped run logged steps 0-1 only
        rows = [r for r in log.read_text().splitlines() if r.strip() and json.loads(r)["step"] <= 1]
        log.write_text("\n".join(rows) + "\n")
    settings = json.loads((target / "run_settings.json").read_text())
    settings["experiment_name"] = target.name
    (target / "run_settings.json").write_text(json.dumps(settings, indent=2))
    return istar_launch(workspace, "istar_resumed", RUN_NAME=name)


@pytest.fixture(scope="session")
def stepagent_match(workspace: Workspace) -> Run:
    return workspace.rl("stepagent_match", "rl_stepagent.sh", "virtualhome")


@pytest.fixture(scope="session")
def stepagent_match_window(workspace: Workspace) -> Run:
    return workspace.rl("stepagent_match_h2", "rl_stepagent.sh", "webshop", HISTORY="2")


@pytest.fixture(scope="session")
def stepagent_irl_window(workspace: Workspace) -> Run:
    return workspace.rl("stepagent_irl_h2", "rl_stepagent.sh", "virtualhome", HISTORY="2", STEPAGENT_MODE="irl")


@pytest.fixture(scope="session")
def eval_twice(workspace: Workspace, pipeline) -> list[Path]:
    """The grpo run's step-2 checkpoint, merged to HF by verl's model_merger, evaluated twice by eval.sh."""
    actor = pipeline["grpo"].run_dir / "checkpoints" / "global_step_2" / "actor"
    hf = workspace.root / "grpo_step2_hf"
    merge = subprocess.run([sys.executable, "-m", "verl.model_merger", "merge", "--backend", "fsdp", "--local_dir",
                            str(actor), "--target_dir", str(hf)], env=workspace.env(), capture_output=True,
                           text=True, timeout=600)
    assert merge.returncode == 0, merge.stderr[-3000:]
    dumps = []
    for i in (1, 2):
        workspace.script(f"eval{i}", "eval.sh", "webshop", MODEL=str(hf), RUN_NAME=f"grpo_step2_{i}").check()
        dumps.append(workspace.out / "eval" / "webshop" / f"grpo_step2_{i}" / "validation")
    return dumps


# ------------------------------------------------------------------------------------------------------ tests


def test_grpo_two_steps_write_metrics_checkpoints_and_dumps(pipeline):
    run = pipeline["grpo"]
    m = assert_trained(run, "critic/advantages/mean", "episode/env_failures")
    assert all(m[s]["episode/env_failures"] == 0 for s in STEPS)
    assert any(k.startswith("val-core/") for k in m[0]) and any(k.startswith("val-core/") for k in m[2])
    assert checkpoint_steps(run) == [1, 2]
    assert (run.run_dir / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    for step in (0, 2):
        rows = [json.loads(r) for r in (run.run_dir / "validation" / f"{step}.jsonl").read_text().splitlines()]
        assert rows and all("spa/won" in r for r in rows)
    settings = json.loads((run.run_dir / "run_settings.json").read_text())
    assert "/sft/webshop/global_step_" in settings["model"] and settings["total_steps"] == 2  # from the SFT policy


def processes_naming(text: str) -> list[int]:
    """Pids of the live processes (other than this one) whose command line contains ``text``."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        if proc.name == str(os.getpid()):
            continue
        try:
            if text.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            pass
    return pids


def test_grpo_on_a_fresh_machine_prepares_its_data_and_model(grpo_fresh, workspace):
    m = assert_trained(grpo_fresh)
    assert sorted(s for s in m if s > 0) == [1, 2]
    log = grpo_fresh.log.read_text(errors="replace")
    assert "no " in log and "preparing 8 tasks per split" in log and "building the tiny model of webshop" in log
    fresh = workspace.root / "fresh"
    assert len(pd.read_parquet(fresh / "data" / "webshop_train.parquet")) == 8
    assert (fresh / "out" / "tiny_model" / "webshop" / "tiny_model.json").is_file()
    assert grpo_fresh.run_dir.is_relative_to(fresh / "out")
    # the launch's own Ray (logical GPUs, a temp dir of its own) was stopped with the run and its temp dir removed
    ray_dirs = set(re.findall(r"'_temp_dir': '([^']+)'", log))
    assert len(ray_dirs) == 1, ray_dirs
    (ray_dir,) = ray_dirs
    assert not Path(ray_dir).exists()
    assert not processes_naming(ray_dir)  # no process of that Ray left


def test_sft_trains_the_policy_the_runs_start_from(pipeline, workspace):
    logs = list((workspace.out / "sft" / "webshop" / "logs").glob("metrics_*.jsonl"))
    rows = [json.loads(x) for p in logs for x in p.read_text().splitlines() if x.strip()]
    losses = [r["data"]["train/loss"] for r in rows if "train/loss" in r["data"]]
    assert losses and all(loss == loss and loss > 0 for loss in losses)
    exports = sorted((workspace.out / "sft" / "webshop").glob("global_step_*/huggingface/model.safetensors"))
    assert exports, "no HF export of the SFT policy"


def test_collect_writes_records_the_estimator_trains_on(pipeline, workspace):
    records = list((workspace.out / "collect" / "webshop").glob("*.jsonl"))
    lines = [json.loads(x) for p in records for x in p.read_text().splitlines() if x.strip()]
    assert len(lines) >= 4 and all(r["turn_spans"] and r["env_name"] == "webshop" for r in lines)
    est = workspace.out / "estimator" / "webshop"
    metrics = json.loads((est / "metrics.json").read_text())
    assert metrics and (est / "config.json").is_file() and (est / "head.safetensors").is_file()


def test_spa_run_rewards_turns_with_the_estimator(pipeline):
    m = assert_trained(pipeline["spa"], "spa/mean_sum_contribution")
    assert all(m[s]["spa/mean_sum_contribution"] != 0 for s in STEPS)  # c_t from the estimator, not zeros


def test_compare_report_reads_the_real_runs(pipeline, workspace):
    out = workspace.out / "compare" / "webshop"
    table = (out / "comparison.md").read_text()
    assert "webshop_spa_spa_spa" in table and "webshop_grpo_outcome_grpo" in table
    rows = list(__import__("csv").DictReader((out / "comparison.csv").open()))
    assert {r["run"] for r in rows} >= {pipeline["spa"].run_dir.name, pipeline["grpo"].run_dir.name}
    assert all(r["last_step"] == "2" for r in rows if r["run"] in (pipeline["spa"].run_dir.name,
                                                                     pipeline["grpo"].run_dir.name))
    assert (out / "val_success_webshop.png").is_file()


def test_gigpo_window_layout_on_alfworld(gigpo_alfworld_window):
    m = assert_trained(gigpo_alfworld_window)
    assert all(m[s]["episode/num_turns"] >= 1 for s in STEPS)
    assert gigpo_alfworld_window.run_dir.name.endswith("_h2")


def test_ppo_critic_run_goes_on_past_env_failures_and_counts_them(ppo_faulty):
    run, faulty_task = ppo_faulty
    m = assert_trained(run, "critic/vf_loss", "episode/env_failures")
    failures = {s: m[s]["episode/env_failures"] for s in STEPS}
    assert sorted(failures.values()) == [0.0, 2.0], failures  # the faulty task's 2 episodes, in one of the steps
    bad = next(s for s in STEPS if failures[s])
    assert m[bad]["episode/env_failure_share"] == 0.5
    assert checkpoint_steps(run) == [2]


def test_spa_in_the_window_layout_rewards_every_step_with_the_estimator(spa_window):
    m = assert_trained(spa_window, "spa/mean_sum_contribution")
    assert all(m[s]["spa/mean_sum_contribution"] != 0 for s in STEPS)
    assert "_h2_est-webshop-" in spa_window.run_dir.name


def test_online_spa_in_the_window_layout_trains_the_estimator(spa_online_window):
    m = assert_trained(spa_online_window, "steprm/loss")
    assert spa_online_window.run_dir.name.endswith("_online_h2_est-webshop-" + spa_online_window.run_dir.name[-6:])


def test_istar_trains_its_prm_and_resumes_with_the_state_it_saved(istar, istar_resumed):
    full = assert_trained(istar, "steprm/loss", "steprm/version", "steprm/pairs")
    for step in STEPS:  # one won and one lost episode per task: the trajectory DPO has pairs and a loss
        assert full[step]["episode/success_rate"] == 0.5 and full[step]["steprm/pairs"] > 0, full[step]
        assert full[step]["steprm/loss"] > 0
    # steprm/weights_norm is the PRM's before the step's update: update 1 moved the weights
    assert full[2]["steprm/weights_norm"] != full[1]["steprm/weights_norm"]
    resumed = assert_trained(istar_resumed, "steprm/loss", "steprm/version")
    assert [s for s in resumed if s > 0] == [1, 2]  # step 1 is the copied log, step 2 the resumed launch's
    assert istar_resumed.launch_steps() == [2]  # the relaunch started at step 2, not from scratch
    assert resumed[2]["steprm/version"] == full[2]["steprm/version"]
    # the resumed PRM scored and trained step 2 from the weights the stopped run saved after update 1, exactly
    assert resumed[2]["steprm/weights_norm"] == full[2]["steprm/weights_norm"]


def test_stepagent_match_on_virtualhome(stepagent_match):
    assert_trained(stepagent_match, "stepagent/compared_rate", "stepagent/prefix_turns")


def test_stepagent_match_window_layout_on_webshop(stepagent_match_window):
    assert_trained(stepagent_match_window, "stepagent/compared_rate", "stepagent/prefix_turns")
    assert stepagent_match_window.run_dir.name.endswith("_h2")


def test_stepagent_irl_window_layout(stepagent_irl_window):
    assert_trained(stepagent_irl_window, "stepagent/compared_rate", "steprm/loss")


def printed_table(log: Path) -> dict[str, list[str]]:
    """group -> cells of the table eval.sh printed at the end of its log (recipe.spa.eval_table's plain form)."""
    lines = log.read_text(errors="replace").splitlines()
    header = max(i for i, line in enumerate(lines) if line.split()[:2] == ["group", "episodes"])
    rows = {}
    for line in lines[header + 1:]:
        cells = line.split()
        if len(cells) != len(lines[header].split()):
            break
        rows[cells[0]] = cells[1:]
    return rows


def test_evaluating_one_checkpoint_twice_gives_the_same_table(eval_twice, workspace):
    from recipe.spa.eval_table import episode_infos, latest_dump, table_rows

    dumps = [latest_dump(d) for d in eval_twice]
    tables = [table_rows(episode_infos(d)[0]) for d in dumps]
    assert tables[0] == tables[1] and dict(tables[0])["all"]["episodes"] == TASKS  # every test task once
    printed = [printed_table(workspace.logs / f"eval{i}.log") for i in (1, 2)]  # what eval.sh showed the user
    assert printed[0] == printed[1] and printed[0]["all"][0] == str(TASKS), printed
    replies = [sorted((r["input"], r["output"]) for r in map(json.loads, d.read_text().splitlines())) for d in dumps]
    assert replies[0] == replies[1]  # the same generations, not only the same counts
