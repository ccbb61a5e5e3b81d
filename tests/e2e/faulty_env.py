"""WebShop envs that misbehave on purpose in the e2e runs (a dataset row names one as
`tests.e2e.faulty_env:<Class>`, with `env.allow_custom_env_classes=true`).

`FaultyWebShop`, for the test of env failures in a real run:

The task `FAULTY_TASK` fails at reset the first time it is reset in a run and in the middle of its episode (at its
second step, whether the reply parsed or not) every later time; other tasks play normally. Which episode came first is kept in `$SPA_E2E_FAULT_DIR`
(env workers are separate processes).

`AlternatingWebShop`, for runs that need both outcomes in every group (a random tiny policy never wins, and iStar's
trajectory DPO learns nothing from a group of losses): every second episode of a task (the 1st, 3rd, ... reset in
the run, counted in `$SPA_E2E_WIN_DIR`) is won at its first step, whatever the reply; the others play normally."""

from __future__ import annotations

import os
from pathlib import Path

from envs.webshop.env import WebShopEnv

FAULTY_TASK_ENV = "SPA_E2E_FAULTY_TASK"
WIN_DIR_ENV = "SPA_E2E_WIN_DIR"


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


class AlternatingWebShop(WebShopEnv):
    def reset(self, task=None, seed=None, split="train"):
        obs, info = super().reset(task, seed, split)
        folder = Path(os.environ[WIN_DIR_ENV])
        n = 0
        while True:  # claim this task's next episode number (atomic across the env worker processes)
            try:
                (folder / f"{self.task_id}.{n}").open("x").close()
                break
            except FileExistsError:
                n += 1
        self._wins = n % 2 == 0
        return obs, info

    def _finish(self, obs, reward, done, info):
        if self._wins:
            reward, done, info = 1.0, True, {**info, "won": True, "score": 1.0}
        return super()._finish(obs, reward, done, info)
