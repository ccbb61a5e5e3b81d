"""StepAgent (arXiv 2411.03817): step-wise rewards from comparison with an expert; see :mod:`.settings`."""

from spa_reward.stepagent.settings import MODES, PREFIX_SCHEDULES, STEPAGENT_KEY, StepAgentSettings, prefix_length

__all__ = ["MODES", "PREFIX_SCHEDULES", "STEPAGENT_KEY", "StepAgentSettings", "prefix_length"]
