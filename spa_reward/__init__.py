"""spa-rl: Stepwise Progress Attribution for LLM agents, as a verl plug-in.

Kept import-light on purpose: verl imports ``spa_reward.register`` in every process through the
``verl.plugins`` entry point, and the heavy pieces (torch models, Ray actors) load only when used.
"""

__version__ = "0.1.0"


def gpu_actor_device() -> str:
    """The torch device of a Ray actor that was given GPUs: ``cuda``, or ``cpu`` on verl's ``cpu`` platform
    (``VERL_PLATFORM=cpu``, ``PLATFORM=cpu`` in the launch scripts), whose Ray GPUs are logical."""
    import os

    return "cpu" if os.environ.get("VERL_PLATFORM", "").strip().lower() == "cpu" else "cuda"
