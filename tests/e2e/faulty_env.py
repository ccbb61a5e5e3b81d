"""A WebShop env that fails on purpose, for the e2e test of env failures in a real run (a dataset row names it as
`tests.e2e.faulty_env:FaultyWebShop` with `env.allow_custom_env_classes=true`).

The task `FAULTY_TASK` fails at reset the first time it is reset in a run and in the middle of its episode (at its
second step, whether the reply parsed or not) every later time; other tasks play normally. Which episode came first is kept in `$SPA_E2E_FAULT_DIR`
(env workers are separate processes)."""

from __future__ import annotations

import os
from pathlib import Path

from envs.webshop.env import WebShopEnv

FAULTY_TASK_ENV = "SPA_E2E_FAULTY_TASK"


class FaultyWebShop(WebShopEnv):
    def reset(self, task=None, seed=None, split="train"):
        self._faulty = str(task) == os.environ.get(FAULTY_TASK_ENV)
        self._fault_steps = 0
        if self._faulty:
            marker = Path(os.environ["SPA_E2E_FAULT_DIR"]) / "reset_failed"
            try:
                marker.open("x").close()
            except FileExistsError:
                pass
            else:
                raise RuntimeError("injected failure at reset")
        return super().reset(task, seed, split)

    def _finish(self, obs, reward, done, info):  # every step, parsed or not, ends here
        self._fault_steps += 1
        if self._faulty and self._fault_steps == 2:
            raise RuntimeError("injected failure in the middle of the episode")
        return super()._finish(obs, reward, done, info)
