"""Lazy access to virtualhome-eval's evolving_graph simulator (imported on first use only)."""

from __future__ import annotations

import logging
from functools import lru_cache
from types import SimpleNamespace

from envs.virtualhome.tasks import INSTALL_HINT, shadowing_problem

__all__ = ["simulator"]


@lru_cache(maxsize=1)
def simulator() -> SimpleNamespace:
    """The simulator's classes; ImportError naming the install command when virtualhome-eval is missing."""
    try:
        from virtualhome_eval.simulation.evolving_graph import environment, execution, scripts
    except ImportError as exc:
        problem = shadowing_problem()
        if problem:
            raise ImportError(f"VirtualHome's simulator cannot be imported: {problem} ({exc})") from exc
        raise ImportError(
            f"VirtualHome needs the evolving_graph simulator of virtualhome-eval: `{INSTALL_HINT}` ({exc})"
        ) from exc
    # the executors log every failed precondition at INFO; keep that out of training logs unless asked for
    sim_logger = logging.getLogger("virtualhome_eval")
    if sim_logger.level == logging.NOTSET:
        sim_logger.setLevel(logging.WARNING)
    return SimpleNamespace(
        EnvironmentGraph=environment.EnvironmentGraph,
        EnvironmentState=environment.EnvironmentState,
        Relation=environment.Relation,
        State=environment.State,
        ScriptExecutor=execution.ScriptExecutor,
        ExecutionInfo=execution.ExecutionInfo,
        Action=scripts.Action,
        Script=scripts.Script,
        ScriptLine=scripts.ScriptLine,
        ScriptObject=scripts.ScriptObject,
    )
