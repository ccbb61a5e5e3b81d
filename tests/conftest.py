"""Shared test fixtures: where the real data lives, and skips with a reason when it does not (counted once more at
the end of the run, naming $SPA_DATA). A test that runs longer than ``$SPA_TEST_NOTICE_S`` seconds (default 60;
0 = off) is named on the terminal while it runs, so a long silent stretch says which test it is; pytest.ini's
``--durations`` lists the slowest ones at the end."""

from __future__ import annotations

import os
import threading
import time
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NO_DATA = "real data not found at"


# ------------------------------------------------------------------------------------- which long test is running
class _RunningNotice:
    """A daemon thread that names the running test once it has run ``after`` seconds, then every ``after`` seconds
    more. It writes to a copy of the terminal's fd taken at configure time, so pytest's output capture does not
    swallow it."""

    def __init__(self, after: float):
        self.after, self.test, self.fd = after, None, os.dup(1)
        threading.Thread(target=self._watch, name="test-running-notice", daemon=True).start()

    def _watch(self) -> None:
        while True:
            time.sleep(1.0)
            test = self.test
            if test is None:
                continue
            nodeid, start, told = test
            elapsed = time.monotonic() - start
            if elapsed >= (told + 1) * self.after and self.test is test:
                self.test = (nodeid, start, told + 1)
                try:
                    os.write(self.fd, f"\n[running {elapsed:.0f} s] {nodeid}\n".encode())
                except OSError:
                    return


_NOTICE: dict = {}


def pytest_configure(config):
    after = float(os.environ.get("SPA_TEST_NOTICE_S", "60") or 0)
    if after > 0 and "notice" not in _NOTICE:
        _NOTICE["notice"] = _RunningNotice(after)


def pytest_runtest_logstart(nodeid, location):
    if "notice" in _NOTICE:
        _NOTICE["notice"].test = (nodeid, time.monotonic(), 0)


def pytest_runtest_logfinish(nodeid, location):
    if "notice" in _NOTICE:
        _NOTICE["notice"].test = None


def pytest_terminal_summary(terminalreporter):
    """Say once, at the end, how many tests were skipped for want of the real data, and where it was looked for."""
    skipped = [r for r in terminalreporter.stats.get("skipped", [])
               if isinstance(r.longrepr, tuple) and NO_DATA in str(r.longrepr[2])]
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} tests skipped: no real data at {shared_data_root()} (set SPA_DATA to the folder "
            "holding alfworld/ and webshop/, see the README's Install and test)", yellow=True)


def shared_data_root() -> Path:
    """`$SPA_DATA`, else the deprecated `$SPA_SHARED_DATA`, else the `shared/data` folder beside the checkout (CI)."""
    env = os.environ.get("SPA_DATA")
    if not env and os.environ.get("SPA_SHARED_DATA"):
        warnings.warn("SPA_SHARED_DATA is deprecated, set SPA_DATA", DeprecationWarning, stacklevel=2)
        env = os.environ["SPA_SHARED_DATA"]
    return Path(env) if env else REPO.parent / "shared" / "data"


def _require(sub: str) -> Path:
    path = shared_data_root() / sub
    if not path.exists():
        pytest.skip(f"{NO_DATA} {path} (set SPA_DATA to the folder holding {sub}/)")
    return path


@pytest.fixture(scope="session")
def alfworld_data() -> Path:
    """Real json_2.1.1 ALFWorld games (valid_seen, train)."""
    return _require("alfworld")


@pytest.fixture(scope="session")
def webshop_data() -> Path:
    """The 1000-product WebShop files."""
    return _require("webshop")


# Nothing in the test suite may reach a model hub: tiny models and tokenizers are built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# Stock textworld's PddlEnv (used by the ALFWorld parity tests) crashes the interpreter in a C finaliser at exit,
# which would turn a green run into SIGSEGV. Once pytest has finished everything (summary printed, caches written),
# leave without running interpreter finalisers, keeping pytest's own exit status.
_EXIT_STATUS = {"status": None}


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS["status"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if _EXIT_STATUS["status"] is not None and not os.environ.get("SPA_TESTS_NORMAL_EXIT"):
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS["status"])


@pytest.fixture(scope="module")
def transfer_queue():
    """A real local TransferQueue (Ray + one SimpleStorage unit), as verl's v1 trainer runs it; per test module."""
    ray = pytest.importorskip("ray")
    tq = pytest.importorskip("transfer_queue")
    from omegaconf import OmegaConf

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
    yield tq
    tq.close()
    ray.shutdown()
