"""The ``spa`` verl recipe (verl-recipe layout, ``recipe/<name>/``): the ``env_agent`` agent loop, its settings, the
env worker pool, the hydra configs (``recipe/spa/config``) and the CLIs (eval table, ...).

Kept import-light: ``recipe.spa.env_pool`` children import this package too.
"""
