"""spa-rl recipe: the ``env_agent`` agent loop, env workers, hydra configs (``recipe/spa/config``) and helper CLIs.

Kept import-light: ``recipe.env_pool`` children import this package too.
"""
