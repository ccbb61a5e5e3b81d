"""spa-rl: Stepwise Progress Attribution for LLM agents, as a verl plug-in.

Kept import-light on purpose: verl imports ``spa_reward.register`` in every process through the
``verl.plugins`` entry point, and the heavy pieces (torch models, Ray actors) load only when used.
"""

__version__ = "0.1.0"
