"""Shared test fixtures: where the real data lives, and skips with a reason when it does not."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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
        pytest.skip(f"real data not found at {path} (set SPA_DATA to the folder holding {sub}/)")
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
