"""WebShop reward: hand-computed cases for crafted goals and products (1.0, partial, 0 and the r_type levels),
colour normalisation, WebShop's (name, value) option quirk, and the spaCy / heuristic noun paths."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("thefuzz")

from envs.webshop.products import Product, parse_pricing  # noqa: E402
from envs.webshop.reward import (  # noqa: E402
    NounExtractor,
    get_reward,
    heuristic_nouns,
    normalize_color,
    option_hits,
    type_reward,
)

CATS = "Clothing, Shoes & Jewelry › Men › Shoes › Athletic › Running"


def product(**kw) -> Product:
    base = dict(asin="B0SHOE0001", title="Red Running Shoes for Men",
                description="Lightweight running shoes with a rubber sole.", bullets=["Rubber sole", "Mesh upper"],
                pricing=[30.0], price_tag="$30.0", options={"color": ["red", "navy blue"], "size": ["9", "10"]},
                attributes=["rubber sole", "lightweight"], category="fashion", query="men's running shoes",
                product_category=CATS)
    base.update(kw)
    return Product(**base)


def goal(**kw) -> dict:
    base = dict(asin="B0SHOE0001", category="fashion", query="men's running shoes", name="Red Running Shoes for Men",
                product_category=CATS, instruction_text="Find me ...", attributes=["rubber sole", "lightweight"],
                price_upper=50.0, goal_options={"color": "red", "size": "10"})
    base.update(kw)
    return base


HEUR = NounExtractor(None, approx=True)


def fixed_nouns(table: dict[str, list[str]]) -> NounExtractor:
    """A spaCy-like tagger whose NOUN tokens are given per text."""

    def nlp(text):
        nouns = set(table.get(text, []))
        return [SimpleNamespace(text=w, pos_="NOUN" if w in nouns else "ADJ") for w in text.split()]

    return NounExtractor(nlp)


def test_exact_purchase_scores_one():
    r, info = get_reward(product(), goal(), 30.0, {"color": "red", "size": "10"}, HEUR)
    assert r == 1.0
    assert info["r_type"] == 1.0 and info["attr_hits"] == 2 and info["option_hits"] == 2 and info["r_price"]


def test_wrong_size_is_partial():
    # (2 attrs + 1 option + price) / (2 + 2 + 1)
    r, _ = get_reward(product(), goal(), 30.0, {"color": "red", "size": "9"}, HEUR)
    assert r == pytest.approx(4 / 5)


def test_no_options_selected():
    r, info = get_reward(product(), goal(), 30.0, {}, HEUR)
    assert r == pytest.approx(3 / 5) and info["option_hits"] == 0


def test_price_over_the_cap():
    r, info = get_reward(product(), goal(price_upper=20.0), 30.0, {"color": "red", "size": "10"}, HEUR)
    assert r == pytest.approx(4 / 5) and info["r_price"] is False


def test_attribute_by_substring_of_title_bullets_or_description():
    p = product(attributes=[])  # no attribute list: only the text fallback can hit
    g = goal(attributes=["mesh upper", "rubber sole", "waterproof"], goal_options={})
    r, info = get_reward(p, g, 30.0, {}, HEUR)
    assert info["attr_hits"] == 2  # "mesh upper" in bullets, "rubber sole" in description
    assert r == pytest.approx((2 + 0 + 1) / (3 + 0 + 1))


def test_unrelated_product_scores_zero():
    mug = product(asin="B0MUG", title="Ceramic Coffee Mug", description="A mug.", bullets=["Dishwasher safe"],
                  attributes=["dishwasher safe"], query="coffee mugs", options={},
                  product_category="Home & Kitchen › Kitchen & Dining › Mugs")
    r, info = get_reward(mug, goal(), 12.0, {}, HEUR)
    assert info["title_score"] == 0.0 and info["r_type"] == 0.0 and r == 0.0


@pytest.mark.parametrize("shared,total,query_match,expected_r_type", [
    (1, 5, False, 0.5),   # title_score 0.2: not > 0.2, no query/category match -> 0.5
    (2, 5, False, 1.0),   # 0.4 > 0.2 -> 1.0
    (1, 11, False, 0.1),  # 0.0909 < 0.1 -> 0.1
    (1, 11, True, 0.1),   # the < 0.1 rule applies after the match rule
    (1, 5, True, 1.0),    # query match -> 1.0
    (0, 5, True, 0.0),    # no shared noun -> 0.0 whatever else matches
])
def test_type_reward_levels(shared, total, query_match, expected_r_type):
    goal_nouns = [f"g{i}" for i in range(total)]
    bought_nouns = goal_nouns[:shared] + ["other"]
    nlp_goal, nlp_bought = " ".join(goal_nouns), " ".join(bought_nouns)
    nouns = fixed_nouns({nlp_goal: goal_nouns, nlp_bought: bought_nouns})
    p = product(title=nlp_bought, query="q1", product_category="A › B")
    g = goal(name=nlp_goal, query="q1" if query_match else "q2", product_category="C › D")
    rt = type_reward(p, g, nouns)
    assert rt["title_score"] == pytest.approx(shared / total)
    assert rt["r_type"] == expected_r_type
    assert nouns.approx is False


def test_category_match_needs_two_shared_levels():
    nouns = fixed_nouns({"a b c d e": ["a", "b", "c", "d", "e"], "a x": ["a", "x"]})
    p = product(title="a x", query="q1", product_category="Home › Kitchen › Mugs")
    g = goal(name="a b c d e", query="q2", product_category="Home › Kitchen › Cups")
    assert type_reward(p, g, nouns) == dict(r_type=1.0, query_match=False, category_match=True, title_score=0.2)
    g2 = goal(name="a b c d e", query="q2", product_category="Home › Garden › Cups")
    assert type_reward(p, g2, nouns)["r_type"] == 0.5


def test_goal_without_nouns_uses_title_score_02():
    nouns = fixed_nouns({})
    rt = type_reward(product(title="xx"), goal(name="yy", query="other"), nouns)
    assert rt["title_score"] == 0.2 and rt["r_type"] == 1.0  # category still matches (same CATS)


def test_normalize_color_text_and_tuple():
    assert normalize_color("navy blue") == "blue"  # first colour of the list order, as WebShop
    assert normalize_color("r.brown2070") == "brown"
    assert normalize_color("xl") == "xl"
    assert normalize_color(("color", "red")) == "red"  # tuple membership
    assert normalize_color(("color", "dark red")) == ("color", "dark red")


def test_option_matching_follows_webshops_name_value_pairs():
    # WebShop compares a synthetic goal's (name, value) pair, processed to "name value"
    assert option_hits(["10"], {"size": "10"}) == 1
    assert option_hits(["x-large"], {"size": "large"}) == 0  # 83 <= 85
    assert option_hits(["r.brown2070"], {"color": "r.brown2070"}) == 0  # the quirk: the exact value misses
    assert option_hits(["r.brown2070"], {"color": "r.brown2070"}, faithful=False) == 1
    # human goals carry a list of option strings
    assert option_hits(["navy blue", "10"], ["navy blue", "size 10"]) == 2


def test_get_reward_faithful_flag():
    g = goal(goal_options={"color": "r.brown2070"}, attributes=["rubber sole"])
    p = product(options={"color": ["r.brown2070"]})
    assert get_reward(p, g, 30.0, {"color": "r.brown2070"}, HEUR)[0] == pytest.approx(2 / 3)
    assert get_reward(p, g, 30.0, {"color": "r.brown2070"}, HEUR, faithful_options=False)[0] == 1.0


def test_heuristic_nouns_and_flag():
    assert heuristic_nouns("Red Running Shoes for Men, 2 Pack") == ["running", "shoes", "men", "pack"]
    assert heuristic_nouns("Portable Wireless Bluetooth Speaker") == ["bluetooth", "speaker"]
    _, info = get_reward(product(), goal(), 30.0, {}, HEUR)
    assert info["type_reward_approx"] is True


def test_parse_pricing():
    assert parse_pricing("$877.8") == ([877.8], "$877.8")
    assert parse_pricing("$19.99 - $27.99") == ([19.99, 27.99], "$19.99 to $27.99")
    assert parse_pricing("$1,299.00") == ([1299.0], "$1299.0")
    assert parse_pricing("") == ([100.0], "$100.0")
    assert parse_pricing(None) == ([100.0], "$100.0")


def test_missing_spacy_model_gives_the_heuristic_without_importing_spacy(tmp_path):
    """Without the model, spaCy (which imports torch: seconds per env worker) is never imported; a model that is a
    folder counts as there."""
    import subprocess
    import sys

    code = ("import sys; from envs.webshop.reward import default_noun_extractor as d, model_available as m; "
            "x = d('no_such_spacy_model_xyz'); "
            "print(x.approx, 'spacy' in sys.modules, m('no_such_spacy_model_xyz'), m(sys.argv[1]))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False", "False", "True"]
