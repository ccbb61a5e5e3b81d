"""WebShop's purchase reward (Yao et al. 2022), re-implemented from its published definition.

``total = (attribute hits + option hits + price ok) / (#goal attributes + #goal options + 1) * r_type``

* ``r_type`` (is it the right kind of product?): 1.0 when the bought product's search ``query`` equals the goal's,
  or at least two ``product_category`` levels (split on ``›``) are shared, or ``title_score > 0.2``; otherwise 0.5.
  Then ``title_score < 0.1`` gives 0.1 and ``title_score == 0`` gives 0.0. ``title_score`` = |nouns of the bought
  title ∩ nouns of the goal title| / |nouns of the goal title| (0.2 when the goal title has no noun); nouns are
  tokens tagged NOUN/PROPN by spaCy ``en_core_web_sm``, lower-cased.
* attribute hit: a goal attribute whose ``thefuzz.token_set_ratio`` with one of the product's attributes is > 85,
  or that is a substring of the lower-cased title, bullet points (joined by spaces) or description.
* option hit: a goal option whose ``token_set_ratio`` with one of the selected option values is > 85, after
  colour normalisation (the first colour word of :data:`COLOR_SET` contained in the text, in list order).
  WebShop passes a synthetic goal's options as ``(name, value)`` pairs (``dict.items()``): colour normalisation
  then tests tuple membership (a colour equal to the name or the value) and the fuzzy match compares against the
  text ``"('name', 'value')"``, which thefuzz's processing turns into ``"name value"``. That is reproduced here,
  since it changes scores: ``'x-large'`` vs ``('size', 'large')`` scores 83 (a miss), while a value with no
  colour word and no token shared with ``"name value"`` misses even when it is exactly the goal's (goal colour
  ``r.brown2070`` bought as ``r.brown2070`` normalises to ``brown`` against ``"color r brown2070"``), so a few
  synthetic goals cannot reach 1.0 in WebShop. ``faithful_options=False`` compares the values instead.
* price ok: the bought price (the product's fixed price) ``<= goal['price_upper']``.

Without spaCy (or without the model) nouns come from :func:`heuristic_nouns`, a documented approximation; every
reward info then says ``type_reward_approx=True``. It only matters when the bought product is not the goal's own
product: for the goal product itself both titles are identical and ``title_score`` is 1 (or 0.2 without nouns, with
the query matching), so ``r_type = 1`` either way.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable

logger = logging.getLogger(__name__)

COLOR_SET = [
    "alabaster", "apricot", "aqua", "ash", "asphalt", "azure", "banana", "beige", "black", "blue", "blush",
    "bordeaux", "bronze", "brown", "burgundy", "camel", "camo", "caramel", "champagne", "charcoal", "cheetah",
    "chestnut", "chocolate", "christmas", "coffee", "cognac", "copper", "coral", "cranberry", "cream", "crystal",
    "dark", "denim", "eggplant", "elephant", "espresso", "fuchsia", "gold", "granite", "grape", "graphite", "grass",
    "gray", "green", "grey", "heather", "indigo", "ivory", "ivy", "khaki", "lavender", "lemon", "leopard", "light",
    "lilac", "lime", "magenta", "maroon", "mauve", "merlot", "midnight", "mint", "mocha", "multicolor", "mushroom",
    "mustard", "natural", "navy", "nude", "olive", "orange", "peach", "pewter", "pink", "plum", "purple", "rainbow",
    "red", "rose", "royal", "rust", "sand", "sapphire", "seashell", "silver", "skull", "slate", "steel", "stone",
    "stonewash", "sunflower", "tan", "taupe", "teal", "tiger", "turquoise", "violet", "walnut", "wheat", "white",
    "wine", "yellow",
]
FUZZY_THRESHOLD = 85
NOUN_TAGS = ("PNOUN", "NOUN", "PROPN")


def normalize_color(value: Any) -> Any:
    """The first colour of :data:`COLOR_SET` that is ``in`` ``value`` (substring for text, membership for a
    tuple), else ``value`` unchanged."""
    for color in COLOR_SET:
        if color in value:
            return color
    return value


# ----------------------------------------------------------------------------- nouns
_FUNCTION_WORDS = frozenset(
    """a an the this that these those some any all each every both either neither no not nor and or but so yet for
    of in on at to from by with without within into onto over under above below between among through across
    about against along around after before during until up down off out per via plus than as like near beside
    i me my mine we us our you your he him his she her it its they them their what which who whom whose
    is are was were be been being am do does did has have had can could will would shall should may might must
    very too also just only more most less least much many few lot lots own same other such""".split()
)
_COMMON_ADJECTIVES = frozenset(
    """new large small big little mini tiny huge giant tall short long wide narrow thick thin high low heavy
    light soft hard easy fast slow quick good great best better fine nice cute pretty beautiful premium
    professional portable adjustable durable compatible wireless digital electric electronic automatic manual
    waterproof breathable comfortable casual classic modern vintage retro fresh organic natural pure free non anti
    multi extra super ultra full half double single triple real genuine original universal slim loose fit fitted
    warm cool cold hot dry wet clean clear stainless sturdy strong reusable washable disposable lightweight
    handmade elegant fashion fashionable sexy casual solid mens womens""".split()
)
_WORD_RE = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?|\d+(?:[.,]\d+)*|\S")


def heuristic_nouns(text: str) -> list[str]:
    """Approximate NOUN/PROPN tokens without a tagger: alphabetic words of 2+ letters that are not function words,
    colours, common product adjectives, or adverb/adjective-shaped (-ly, -ous, -ful, -less, 7+ letter -able/-ible).
    Lower-cased, in order."""
    nouns = []
    for tok in _WORD_RE.findall(text):
        w = tok.lower()
        if not w.isalpha() or len(w) < 2 or w in _FUNCTION_WORDS or w in _COMMON_ADJECTIVES or w in COLOR_SET:
            continue
        if (len(w) > 4 and w.endswith("ly")) or w.endswith(("ous", "ful", "less")):
            continue
        if len(w) >= 7 and w.endswith(("able", "ible")):
            continue
        nouns.append(w)
    return nouns


class NounExtractor:
    """Lower-cased NOUN/PROPN tokens of a text. Uses spaCy's ``en_core_web_sm`` when importable (``approx`` is
    False), else :func:`heuristic_nouns` (``approx`` is True). ``nlp`` may be any spaCy-like callable."""

    def __init__(self, nlp: Callable | None = None, approx: bool | None = None):
        self.nlp = nlp
        self.approx = (nlp is None) if approx is None else approx
        self._cache: dict[str, tuple[str, ...]] = {}

    def __call__(self, text: str) -> tuple[str, ...]:
        out = self._cache.get(text)
        if out is None:
            if self.nlp is None:
                out = tuple(heuristic_nouns(text))
            else:
                out = tuple(t.text.lower() for t in self.nlp(text) if t.pos_ in NOUN_TAGS)
            if len(self._cache) < 200_000:
                self._cache[text] = out
        return out


def model_available(model: str) -> bool:
    """``model`` is a spaCy model spaCy could load: an installed package of that name, or a folder."""
    import importlib.util

    if Path(model).expanduser().is_dir():
        return True
    try:
        return importlib.util.find_spec(model) is not None
    except (ImportError, ValueError):  # e.g. a dotted name whose parent is not a package
        return False


@lru_cache(maxsize=None)
def default_noun_extractor(model: str = "en_core_web_sm") -> NounExtractor:
    """spaCy with ``model`` when both are installed, else the heuristic (logged once). spaCy is imported only
    when the model is there (an installed package or a folder): importing spaCy costs seconds (it imports torch),
    paid by every env worker for nothing when the model is missing."""
    if not model_available(model):
        logger.info("WebShop type reward: spaCy model %r is not installed; using the noun heuristic", model)
        return NounExtractor(None, approx=True)
    try:
        import spacy

        nlp = spacy.load(model, disable=["parser", "ner", "lemmatizer"])
        return NounExtractor(nlp, approx=False)
    except Exception as exc:  # ImportError, OSError (model missing), version clashes...
        logger.info("WebShop type reward: spaCy model %r unavailable (%r); using the noun heuristic", model, exc)
        return NounExtractor(None, approx=True)


# ----------------------------------------------------------------------------- reward parts
def _token_set_ratio(a: Any, b: Any) -> int:
    from thefuzz import fuzz

    return fuzz.token_set_ratio(a, b)


def type_reward(product, goal: dict, nouns: NounExtractor) -> dict:
    query_match = product.query == goal["query"]
    bought_cats = {x.strip() for x in product.product_category.split("›")}
    goal_cats = {x.strip() for x in goal["product_category"].split("›")}
    category_match = len(bought_cats & goal_cats) >= 2
    bought = nouns(product.title)
    desired = nouns(goal["name"])
    title_score = 0.2 if not desired else len(set(bought) & set(desired)) / len(desired)
    r_type = 1.0 if (query_match or category_match or title_score > 0.2) else 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return dict(r_type=r_type, query_match=query_match, category_match=category_match, title_score=title_score)


def attribute_hits(product, goal_attributes: Iterable[str]) -> int:
    hits = 0
    title = product.title.lower()
    bullets = " ".join(product.bullets).lower()
    description = product.description.lower()
    for g in goal_attributes:
        if any(_token_set_ratio(p, g) > FUZZY_THRESHOLD for p in product.attributes):
            hits += 1
        elif g in title or g in bullets or g in description:
            hits += 1
    return hits


def goal_option_items(goal_options: dict | list, faithful: bool = True) -> list:
    """What WebShop compares against: ``(name, value)`` pairs for a dict (synthetic goals), else the list.
    ``faithful=False`` compares a dict's values instead (the evident intent; not WebShop's numbers)."""
    if isinstance(goal_options, dict):
        return list(goal_options.items()) if faithful else list(goal_options.values())
    return list(goal_options)


def option_hits(selected_values: Iterable[str], goal_options: dict | list, faithful: bool = True) -> int:
    bought = [normalize_color(v) for v in selected_values]
    hits = 0
    for g in (normalize_color(o) for o in goal_option_items(goal_options, faithful)):
        if any(_token_set_ratio(p, g) > FUZZY_THRESHOLD for p in bought):
            hits += 1
    return hits


def get_reward(product, goal: dict, price: float, options: dict[str, str],
               nouns: NounExtractor | None = None, faithful_options: bool = True) -> tuple[float, dict]:
    """(reward in [0, 1], breakdown) for buying ``product`` at ``price`` with ``options`` selected.
    ``faithful_options=False`` matches a synthetic goal's option values instead of WebShop's (name, value) pairs."""
    nouns = nouns or default_noun_extractor()
    rt = type_reward(product, goal, nouns)
    r_price = bool(price <= goal["price_upper"]) if goal["price_upper"] > 0 else None
    n_attr, n_opt = len(goal["attributes"]), len(goal["goal_options"])
    a_hits = attribute_hits(product, goal["attributes"])
    o_hits = option_hits(list(options.values()), goal["goal_options"], faithful_options)
    total = (a_hits + o_hits + int(bool(r_price))) / (n_attr + n_opt + 1) * rt["r_type"]
    info = dict(rt, r_att=a_hits / n_attr if n_attr else None, attr_hits=a_hits, option_hits=o_hits,
                r_option=o_hits / n_opt if n_opt else None, r_price=r_price, type_reward_approx=nouns.approx)
    return float(total), info
