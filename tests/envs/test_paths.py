"""One data root (``envs.paths``): ``$SPA_DATA``, the older variables with a deprecation message, the default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import envs.paths as paths

ALL_VARS = ("SPA_DATA", "SPA_SHARED_DATA", "SHARED_DATA", "SPA_ALFWORLD_DATA", "ALFWORLD_DATA", "SPA_WEBSHOP_DATA",
            "WEBSHOP_DATA", "SPA_VIRTUALHOME_DATA")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def clean_env(monkeypatch):
    for var in ALL_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(paths, "_warned", set())
    return monkeypatch


def test_spa_data_is_the_root(clean_env, tmp_path, capsys):
    clean_env.setenv("SPA_DATA", str(tmp_path))
    assert paths.data_root() == tmp_path
    assert paths.env_data_dir("webshop") is None  # the folder does not exist
    (tmp_path / "webshop").mkdir()
    assert paths.env_data_dir("webshop") == tmp_path / "webshop"
    assert capsys.readouterr().err == ""  # no deprecation message for the current variable


@pytest.mark.parametrize("var", ["SPA_SHARED_DATA", "SHARED_DATA"])
def test_deprecated_root_variables_still_work_and_say_so(clean_env, tmp_path, capsys, var):
    clean_env.setenv(var, str(tmp_path))
    with pytest.warns(DeprecationWarning, match=f"{var} is deprecated: set \\$SPA_DATA"):
        assert paths.data_root() == tmp_path
    assert "SPA_DATA" in capsys.readouterr().err
    clean_env.setenv("SPA_DATA", str(tmp_path / "new"))  # the new variable wins
    assert paths.data_root() == tmp_path / "new"


@pytest.mark.parametrize("name,var", [(n, v) for n, vs in paths.DEPRECATED_ENV_VARS.items() for v in vs])
def test_per_env_overrides_win_with_a_message(clean_env, tmp_path, capsys, name, var):
    clean_env.setenv("SPA_DATA", str(tmp_path / "root"))
    (tmp_path / "root" / name).mkdir(parents=True)
    (tmp_path / "mine").mkdir()
    clean_env.setenv(var, str(tmp_path / "mine"))
    with pytest.warns(DeprecationWarning, match=var):
        assert paths.env_data_dir(name) == tmp_path / "mine"
    assert f"${var} is deprecated" in capsys.readouterr().err


def test_alfworld_import_side_effect_is_not_a_setting(clean_env, tmp_path):
    """`import alfworld` sets ALFWORLD_DATA=~/.cache/alfworld; without games there, it must not hide $SPA_DATA."""
    clean_env.setenv("HOME", str(tmp_path / "home"))
    clean_env.setenv("SPA_DATA", str(tmp_path / "root"))
    (tmp_path / "root" / "alfworld").mkdir(parents=True)
    clean_env.setenv("ALFWORLD_DATA", str(tmp_path / "home" / ".cache" / "alfworld"))
    assert paths.env_data_dir("alfworld") == tmp_path / "root" / "alfworld"
    (tmp_path / "home" / ".cache" / "alfworld" / "json_2.1.1").mkdir(parents=True)  # alfworld-download's games
    with pytest.warns(DeprecationWarning):
        assert paths.env_data_dir("alfworld") == tmp_path / "home" / ".cache" / "alfworld"


def test_default_root(clean_env, tmp_path):
    clean_env.setenv("XDG_DATA_HOME", str(tmp_path))
    expected = paths.SHARED_DEFAULT if paths.SHARED_DEFAULT.is_dir() else tmp_path / "spa_rl"
    assert paths.data_root() == expected
    assert paths.SHARED_DEFAULT == REPO.parent / "shared" / "data"


def test_cli_defaults_read_the_root(clean_env, tmp_path):
    """envs.prepare with no --data-dir finds $SPA_DATA/<env> (here: a tiny WebShop set)."""
    pytest.importorskip("thefuzz")
    from envs.webshop.fixtures import write_tiny_dataset

    write_tiny_dataset(tmp_path / "root" / "webshop")
    env = {k: v for k, v in os.environ.items() if k not in ALL_VARS}
    env.update(SPA_DATA=str(tmp_path / "root"), SPA_RL_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "envs.prepare", "webshop", "--output-dir", str(tmp_path / "out"),
                          "--splits", "test", "--max-tasks", "3", "--workers", "1"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out" / "webshop_test.parquet").is_file()
