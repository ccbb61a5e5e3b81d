"""WebShop (Yao et al. 2022) as a text environment, written from scratch: products/goals loading
(:mod:`~envs.webshop.products`), a Lucene-exact BM25 search (:mod:`~envs.webshop.search`), the purchase reward
(:mod:`~envs.webshop.reward`), page rendering (:mod:`~envs.webshop.pages`) and the env (:mod:`~envs.webshop.env`).
"""

from envs.webshop.env import WebShopEnv

__all__ = ["WebShopEnv"]
