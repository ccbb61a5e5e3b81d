"""tests/conftest.py's reporting: a test that runs long is named while it runs, and the tests skipped for want of the
real data are counted at the end with the folder that was looked at."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_long_test_is_named_while_it_runs_and_data_skips_are_counted(tmp_path):
    (tmp_path / "test_case.py").write_text(
        "import time\n\n"
        "def test_sleepy():\n    time.sleep(4)\n\n"
        "def test_needs_data(webshop_data):\n    pass\n")
    env = {**os.environ, "SPA_TEST_NOTICE_S": "1", "SPA_DATA": str(tmp_path / "nowhere"),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(tmp_path / "test_case.py")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "s] test_case.py::test_sleepy" in proc.stdout and "[running " in proc.stdout
    assert "test_needs_data" not in proc.stdout.split("[running ")[1]  # only the long one is named
    assert f"1 tests skipped: no real data at {tmp_path / 'nowhere'} (set SPA_DATA" in proc.stdout
