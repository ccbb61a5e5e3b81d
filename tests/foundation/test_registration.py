"""Registration through verl's plugin hooks: a plain ``import verl`` in a fresh process (and in a Ray actor) must
see every spa-rl component. verl swallows plugin import errors, so the module is also imported directly."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHECK = (
    "import verl\n"
    "from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY as A\n"
    "from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY as T\n"
    "from verl.experimental.reward_loop.reward_manager.registry import REWARD_MANAGER as R\n"
    "from verl.experimental.agent_loop.agent_loop import _agent_loop_registry as L\n"
    "print(sorted(k for k in A if k in ('spa','gigpo')), 'spa' in T, sorted(k for k in R if k in ('spa','outcome')),"
    " 'env_agent' in L)\n"
)
ALL = "['gigpo', 'spa'] True ['outcome', 'spa'] True"
NONE = "[] False [] False"


def run_check(**env_overrides: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERL_USE_EXTERNAL")}
    env.update(env_overrides)
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_direct_import_registers_everything():
    import spa_reward.register as reg
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    assert get_adv_estimator_fn("spa").__name__ == "compute_spa_advantage"
    assert get_adv_estimator_fn("gigpo").__name__ == "compute_gigpo_advantage"
    assert set(reg.REGISTERED) == {"adv_estimator", "trainer_mode", "reward_manager", "agent_loop"}


def test_entry_point_registers_on_plain_import_verl():
    assert run_check() == ALL


def test_env_var_fallback_and_plugin_switch():
    assert run_check(VERL_USE_EXTERNAL_PLUGINS="none") == NONE  # proves the entry point did the work above
    assert run_check(VERL_USE_EXTERNAL_PLUGINS="none", VERL_USE_EXTERNAL_MODULES="spa_reward.register") == ALL


def test_visible_inside_a_ray_actor():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        @ray.remote(num_cpus=0)
        class Probe:
            def check(self) -> str:
                import io
                from contextlib import redirect_stdout

                buf = io.StringIO()
                with redirect_stdout(buf):
                    exec(CHECK, {})
                return buf.getvalue().strip()

        assert ray.get(Probe.remote().check.remote(), timeout=300) == ALL
    finally:
        ray.shutdown()


def run_snippet(code: str, **env_overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERL_USE_EXTERNAL")}
    env.update(env_overrides)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_plugin_import_is_lazy():
    """``import verl`` with the plug-in loads no trainer, worker, estimator or agent-loop code (issue 8, item 6)."""
    out = run_snippet(
        "import sys, verl\n"
        "heavy = ['verl.trainer.ppo.core_algos', 'verl.trainer.ppo.v1', 'verl.experimental.agent_loop.agent_loop',\n"
        "         'verl.experimental.reward_loop.reward_manager', 'spa_reward.trainer', 'spa_reward.advantage',\n"
        "         'spa_reward.reward_manager', 'recipe.spa.agent_loop']\n"
        "print('spa_reward.register' in sys.modules, [m for m in heavy if m in sys.modules])\n"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "True []"


def test_trainer_lookup_after_a_direct_trainer_import():
    """Importing spa_reward.trainer first (it imports verl's v1, whose hook imports it back) still registers."""
    out = run_snippet("import verl, spa_reward.trainer\nfrom verl.trainer.ppo.v1 import get_trainer_cls\n"
                      "from spa_reward.startup import STARTUP_CHECKS\n"
                      "print(get_trainer_cls('spa').__name__, len(STARTUP_CHECKS))")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "SpaTrainer 1"
    assert "spa-rl plug-in" not in out.stderr


def test_broken_sub_import_is_printed_on_stderr():
    """verl swallows plug-in errors at DEBUG; ours reach stderr, at load and when a registry module is imported."""
    # broken at load (the entry point): verl goes on, but stderr names the problem
    out = run_snippet("import sys\nsys.modules['recipe.spa.settings'] = None\nimport verl\nprint('verl imported')")
    assert out.returncode == 0 and "verl imported" in out.stdout
    assert "spa-rl plug-in: loading spa_reward.register failed" in out.stderr and "recipe.spa.settings" in out.stderr
    # broken in a registration hook: the import of verl's registry module fails loudly
    out = run_snippet("import sys\nsys.modules['spa_reward.advantage'] = None\nimport verl\n"
                      "import verl.trainer.ppo.core_algos")
    assert out.returncode != 0
    assert "spa-rl plug-in: registering with verl.trainer.ppo.core_algos failed" in out.stderr
    assert "spa_reward.advantage" in out.stderr
