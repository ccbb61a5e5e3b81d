"""VirtualHome (Puig et al. 2018) as a text environment on the pure-Python evolving_graph simulator of
``virtualhome-eval==0.1.1`` (install it with ``pip install --no-deps virtualhome-eval==0.1.1``): tasks, splits
and goals (:mod:`~envs.virtualhome.tasks`), natural-language actions (:mod:`~envs.virtualhome.actions`),
observation text and anchors (:mod:`~envs.virtualhome.observe`) and the env (:mod:`~envs.virtualhome.env`).
Importing this package does not import the simulator; constructing the env does.
"""

from envs.virtualhome.env import VirtualHomeEnv

__all__ = ["VirtualHomeEnv"]
