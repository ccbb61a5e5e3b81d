"""install.sh (the README's and .ci/run's install step) on a fake pip: a failed engine build is explained (which
package, stopped from outside or a compiler error, what to do) and, when its jobs were stopped from outside, retried
once with one compile job through a `make` shim that overrides the package's own -j."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

TERMINATED = """Collecting fast-downward-textworld (from textworld[pddl]==1.7.0)
  Preparing metadata (pyproject.toml): started
  Executing command "make -j2" in directory "builds/library".
  make[2]: *** [search/CMakeFiles/downward.dir/build.make:76: search/CMakeFiles/downward.dir/planner.cc.o] Terminated
  make[1]: *** [CMakeFiles/Makefile2:97: search/CMakeFiles/downward.dir/all] Terminated
  error: subprocess-exited-with-error
"""
COMPILER_ERROR = """Collecting fast-downward-textworld (from textworld[pddl]==1.7.0)
  src/search/planner.cc:12:5: error: 'x' was not declared in this scope
  make[2]: *** [search/CMakeFiles/downward.dir/build.make:76: planner.cc.o] Error 1
  error: subprocess-exited-with-error
"""


def fake_python(tmp_path: Path, first_log: str) -> Path:
    """A `python` whose `-m pip install ...` fails with ``first_log`` the first time, then runs `make -j8` (as
    fast-downward's build.py does) on a Makefile and succeeds."""
    (tmp_path / "first.log").write_text(first_log)
    (tmp_path / "Makefile").write_text("all:\n\t@echo built\n")
    script = tmp_path / "python"
    script.write_text(f"""#!/usr/bin/env bash
echo "pip $*" >> {tmp_path}/calls
if [[ ! -e {tmp_path}/failed ]]; then touch {tmp_path}/failed; cat {tmp_path}/first.log; exit 1; fi
make -j8 -C {tmp_path} all
""")
    script.chmod(0o755)
    return script


def install(tmp_path: Path, log: str, **env: str) -> subprocess.CompletedProcess:
    python = fake_python(tmp_path, log)
    return subprocess.run(["bash", str(REPO / "install.sh"), "-e", ".[test,all-envs]"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHON": str(python), **env})


def test_terminated_build_is_explained_and_retried_with_one_job(tmp_path):
    proc = install(tmp_path, TERMINATED)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    assert "pip failed while building fast-downward-textworld from source" in err
    assert "stopped from outside" in err and "available memory" in err
    assert 'BUILD_JOBS=1 bash install.sh -e .[test,all-envs]' in err and "MAKEFLAGS does not help" in err
    assert "Retrying once with BUILD_JOBS=1" in err
    out = proc.stdout  # pip's output, the shim's line included
    assert "[spa-rl install] make: -j8 -C" in out and "-> -j1 (BUILD_JOBS)" in out and "built" in out
    assert (tmp_path / "calls").read_text().count("pip -m pip install -e .[test,all-envs]") == 2


@pytest.mark.parametrize("env", [{"SPA_INSTALL_RETRY": "0"}, {"BUILD_JOBS": "1"}])
def test_no_retry_when_turned_off_or_jobs_already_set(tmp_path, env):
    proc = install(tmp_path, TERMINATED, **env)
    assert proc.returncode == 1 and "stopped from outside" in proc.stderr and "Retrying" not in proc.stderr
    assert (tmp_path / "calls").read_text().count("pip -m pip install") == 1


def test_compiler_error_is_named_and_not_retried(tmp_path):
    proc = install(tmp_path, COMPILER_ERROR)
    assert proc.returncode == 1 and "Retrying" not in proc.stderr and "stopped from outside" not in proc.stderr
    assert "pip failed while building fast-downward-textworld" in proc.stderr
    assert "The compiler or cmake reported an error" in proc.stderr


def test_bad_build_jobs_is_refused(tmp_path):
    proc = install(tmp_path, TERMINATED, BUILD_JOBS="two")
    assert proc.returncode == 2 and "BUILD_JOBS=two" in proc.stderr and not (tmp_path / "calls").exists()
