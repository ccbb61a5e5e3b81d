"""Imports only run down the floors: envs <- spa_reward <- recipe <- the composition root (``spa_reward.register``,
which verl loads as its plug-in and nothing imports). Checked on the source of every module, function-level and
``importlib.import_module("...")`` imports included."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FLOORS = {"envs": 0, "spa_reward": 1, "recipe": 2}
ROOT = "spa_reward.register"  # the composition root: the floor above the recipe


def floor(module: str) -> int | None:
    if module == ROOT or module.startswith(ROOT + "."):
        return 3
    return FLOORS.get(module.split(".")[0])


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]  # `from spa_reward import register`
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            out.append((node.lineno, node.args[0].value))
    return out


def upward_imports(repo: Path = REPO) -> list[str]:
    bad = []
    for package in FLOORS:
        for path in sorted((repo / package).rglob("*.py")):
            parts = path.relative_to(repo).with_suffix("").parts
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mine = floor(module)
            for line, name in imported_modules(ast.parse(path.read_text(encoding="utf-8"))):
                theirs = floor(name)
                if theirs is not None and theirs > mine:
                    bad.append(f"{path.relative_to(repo)}:{line} imports {name} (floor {theirs} > {mine})")
    return bad


def test_no_module_imports_up_a_floor():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path):
    """The checker itself: the circle this test was written for (config_check -> the root -> recipe) is caught."""
    for package, source in (("envs", "import recipe.spa.settings\n"),
                            ("spa_reward", "def f():\n    import spa_reward.register\n"),
                            ("recipe", "import importlib\nimportlib.import_module('spa_reward.register')\n")):
        (tmp_path / package).mkdir()
        (tmp_path / package / "mod.py").write_text(source)
    (tmp_path / "spa_reward" / "register.py").write_text("import recipe.spa\nimport envs\n")  # the root: fine
    (tmp_path / "recipe" / "ok.py").write_text("from spa_reward import config_check\nimport envs\n")
    assert [b.split(" (")[0] for b in upward_imports(tmp_path)] == [
        "envs/mod.py:1 imports recipe.spa.settings",
        "spa_reward/mod.py:2 imports spa_reward.register",
        "recipe/mod.py:2 imports spa_reward.register",
    ]


def test_config_checks_come_from_the_root_that_verl_loads():
    """config_check no longer imports the root: the recipe's checks are registered when verl loads its plug-in;
    with plug-ins off and no VERL_USE_EXTERNAL_MODULES, the check says so instead of skipping them silently."""
    import os
    import subprocess
    import sys

    code = ("from tests.recipe.helpers import trainer_config\n"
            "from spa_reward.config_check import config_problems\n"
            "p = config_problems(trainer_config('env.max_steps=0'), check_files=False)\n"
            "print([x[:40] for x in p])\n")

    def run(**env):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600,
                             env={**os.environ, "PYTHONPATH": str(REPO), **env})
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout

    on = run()
    assert "env.max_steps must be" in on and "not regi" not in on
    off = run(VERL_USE_EXTERNAL_PLUGINS="none", VERL_USE_EXTERNAL_MODULES="")
    assert "the recipe's config checks are not regi" in off and "env.max_steps" not in off
