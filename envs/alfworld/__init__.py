"""Text ALFWorld on the real TextWorld/PDDL engine (``pip install -e '.[alfworld]'``).

``AlfWorldEnv`` is the adapter; ``build_synthetic_game`` writes a tiny game from the PDDL domain and grammar inside
the installed alfworld wheel, for smoke tests without the ALFWorld data.
"""

from envs.alfworld.env import AlfWorldEnv
from envs.alfworld.games import SPLIT_ALIASES, TASK_TYPES
from envs.alfworld.synthetic import build_synthetic_game

__all__ = ["AlfWorldEnv", "SPLIT_ALIASES", "TASK_TYPES", "build_synthetic_game"]
