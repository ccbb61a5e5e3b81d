"""WebShopEnv: data loading and goals, pages and navigation (paging, sub pages, invalid actions), rewards at Buy
Now, the expert, the human-goal path, the streamed full-set path, and a fuzz test that ``step`` never raises."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("thefuzz")
pytest.importorskip("nltk")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from envs.base import STEP_INFO_KEYS, clean_action  # noqa: E402
from envs.webshop import WebShopEnv  # noqa: E402
from envs.webshop.fixtures import MUG, SHOE, TRAIL, write_tiny_dataset  # noqa: E402
from envs.webshop.products import (  # noqa: E402
    FULL_FILES,
    SMALL_FILES,
    WebShopDataError,
    find_product_files,
    iter_json_array,
    iter_json_object,
    resolve_data_dir,
)

INFO_KEYS = set(STEP_INFO_KEYS) | {"admissible_actions", "available_actions", "page", "type_reward_approx"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("webshop_tiny"), human=True)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("webshop_cache")


@pytest.fixture
def env(tiny_dir, cache_dir):
    e = WebShopEnv(data_dir=tiny_dir, cache_dir=cache_dir, test_size=2, spacy_model=None)
    yield e
    e.close()


def goal_id(env, asin, **options) -> str:
    for i, g in enumerate(env.goals):
        if g["asin"] == asin and all(g["goal_options"].get(k) == v for k, v in options.items()):
            return str(i)
    raise AssertionError("no such goal")


# ----------------------------------------------------------------------------- data and goals
def test_data_dir_resolution(tmp_path, monkeypatch, tiny_dir):
    for var in ("WEBSHOP_DATA", "SPA_WEBSHOP_DATA", "SHARED_DATA", "SPA_SHARED_DATA"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SPA_DATA", str(tmp_path / "root"))
    with pytest.raises(WebShopDataError, match=r"root/webshop.*SPA_DATA"):
        resolve_data_dir(None)
    with pytest.raises(WebShopDataError, match="setup.sh"):
        WebShopEnv(data_dir=None)
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "webshop").symlink_to(tiny_dir)
    assert resolve_data_dir(None) == tmp_path / "root" / "webshop"
    monkeypatch.setenv("WEBSHOP_DATA", str(tiny_dir))  # deprecated, still read (and it wins over the root)
    with pytest.warns(DeprecationWarning, match="SPA_DATA"):
        import envs.paths

        envs.paths._warned.clear()
        assert resolve_data_dir(None) == tiny_dir
    with pytest.raises(WebShopDataError, match="items_shuffle_1000.json"):
        find_product_files(tmp_path)


def test_file_choice_small_and_full(tmp_path):
    small = write_tiny_dataset(tmp_path / "small")
    assert find_product_files(small)[2] == "small"
    full = write_tiny_dataset(tmp_path / "full", names=FULL_FILES)
    prod, attr, kind = find_product_files(full)
    assert (prod.name, attr.name, kind) == (*FULL_FILES, "full")
    both = write_tiny_dataset(tmp_path / "full", names=SMALL_FILES)
    assert find_product_files(both)[2] == "small"
    assert find_product_files(both, "full")[2] == "full"
    with pytest.raises(ValueError):
        find_product_files(both, "medium")


def test_streaming_json_readers(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(' [ {"x": [1, 2.5e3]}, "s", 123456789012345678901234 , null ] ')
    assert list(iter_json_array(p)) == [{"x": [1, 2500.0]}, "s", 123456789012345678901234, None]
    q = tmp_path / "o.json"
    q.write_text('{"a": {"b": []}, "c": 1.5}')
    assert list(iter_json_object(q)) == [("a", {"b": []}), ("c", 1.5)]
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1}')
    with pytest.raises(ValueError):
        list(iter_json_array(bad))


def test_synthetic_goals(env):
    assert len(env.goals) == 5  # shoe: 2 colours x 2 sizes; mug: 1
    shoe = [g for g in env.goals if g["asin"] == SHOE]
    assert sorted((g["goal_options"]["color"], g["goal_options"]["size"]) for g in shoe) == [
        ("navy blue", "10"), ("navy blue", "9"), ("red", "10"), ("red", "9")]
    g = shoe[0]
    assert g["instruction_text"].startswith("Find me lightweight men's running shoes with rubber sole with color: ")
    assert g["instruction_text"].endswith(" dollars") and g["price_upper"] in (50.0, 60.0, 70.0)
    assert g["query"] == "men's running shoes" and g["attributes"] == ["rubber sole", "lightweight"]
    assert len(env.data.asins) == 28
    p = env.data.product(TRAIL)
    assert p.options == {"color": ["black", "white"]} and p.attributes == ["rubber sole"]
    assert env.data.product("B0FILL0000").attributes == ["DUMMY_ATTR"]
    assert 12.5 <= env.data.price(MUG) <= 15.0 and env.data.product(MUG).price_tag == "$12.5 to $15.0"


def test_goal_order_is_deterministic(tiny_dir, cache_dir):
    from envs.webshop.products import WebShopData

    a = WebShopEnv(data_dir=tiny_dir, cache_dir=cache_dir, spacy_model=None).goals
    b = WebShopData(tiny_dir / SMALL_FILES[0], tiny_dir / SMALL_FILES[1], cache_dir=cache_dir).goals
    assert a == b


def test_splits(tiny_dir, cache_dir):
    e = WebShopEnv(data_dir=tiny_dir, cache_dir=cache_dir, test_size=2, val_size=1, spacy_model=None)
    assert e.list_tasks("test") == ["0", "1"]
    assert e.list_tasks("val") == ["2"]
    assert e.list_tasks("train") == ["3", "4"]
    assert e.list_tasks("all") == ["0", "1", "2", "3", "4"]
    with pytest.raises(ValueError):
        e.list_tasks("valid_seen")
    with pytest.raises(ValueError):
        e.reset("99")
    assert e.task_type("0") in ("fashion", "garden")


def test_num_products(tiny_dir, cache_dir):
    e = WebShopEnv(data_dir=tiny_dir, cache_dir=cache_dir, num_products=2, spacy_model=None)
    assert e.data.asins == [SHOE, MUG] and len(e.goals) == 5
    e.reset("0")
    obs, *_ = e.step("search[running shoes]")
    assert "Total results: 1)" in obs


# ----------------------------------------------------------------------------- pages and navigation
def test_reset_observation_and_info(env):
    obs, info = env.reset("0")
    assert obs.startswith("WebShop [SEP] Instruction: [SEP] Find me") and obs.endswith("[SEP] Search")
    assert info["admissible_actions"] == ["search[<query>]"]
    assert info["anchor"] == "search" and info["goal"] in obs and info["task_id"] == "0"
    assert info["available_actions"] == {"has_search_bar": True, "clickables": []}


def test_results_paging(env):
    env.reset("0")
    obs, r, done, info = env.step("search[running shoe]")
    assert info["executable"] and not done and r == 0.0
    assert "Page 1 (Total results: 27)" in obs
    assert info["admissible_actions"][:2] == ["click[Back to Search]", "click[Next >]"]
    assert "click[< Prev]" not in info["admissible_actions"]
    asins = [a[6:-1] for a in info["admissible_actions"] if a.startswith("click[B0")]
    assert len(asins) == 10
    first_anchor = info["anchor"]
    assert first_anchor.startswith("results|") and first_anchor.endswith("|p1")
    obs, _, _, info = env.step("CLICK[next >]")
    assert "Page 2 (Total results: 27)" in obs and "click[< Prev]" in info["admissible_actions"]
    obs, _, _, info = env.step("click[Next >]")
    assert "Page 3 (Total results: 27)" in obs and "click[Next >]" not in info["admissible_actions"]
    assert len([a for a in info["admissible_actions"] if a.startswith("click[B0")]) == 7
    env.step("click[< Prev]")
    obs, _, _, info = env.step("click[< Prev]")
    assert info["anchor"] == first_anchor
    obs, _, _, info = env.step("click[Back to Search]")
    assert info["anchor"] == "search" and info["admissible_actions"] == ["search[<query>]"]


def test_item_page_options_and_sub_pages(env):
    env.reset(goal_id(env, SHOE, color="red", size="10"))
    env.step("search[red running shoes for men]")
    obs, _, _, info = env.step(f"click[{SHOE.lower()}]")  # asins match case-insensitively
    assert info["page"] == "item" and info["anchor"] == f"item|{SHOE}|"
    assert "[SEP] color [SEP] red [SEP] navy blue [SEP] size [SEP] 9 [SEP] 10 [SEP]" in obs
    assert "Price: $30.0" in obs and "Selected options" not in obs
    assert info["admissible_actions"] == ["click[Back to Search]", "click[< Prev]", "click[red]", "click[navy blue]",
                                          "click[9]", "click[10]", "click[Description]", "click[Features]",
                                          "click[Buy Now]"]
    obs, _, _, info = env.step("click[Navy  Blue]")
    assert "Selected options: color: navy blue" in obs and info["anchor"] == f"item|{SHOE}|color=navy blue"
    obs, _, _, info = env.step("click[red]")
    obs, _, _, info = env.step("click[10]")
    assert "Selected options: color: red; size: 10" in obs and info["anchor"] == f"item|{SHOE}|color=red;size=10"
    obs, _, _, info = env.step("click[Features]")
    assert info["page"] == "sub" and "Rubber sole [SEP] Breathable mesh upper" in obs
    assert info["admissible_actions"] == ["click[Back to Search]", "click[< Prev]"]
    assert info["anchor"] == f"item:features|{SHOE}|color=red;size=10"
    obs, _, _, info = env.step("click[< Prev]")
    assert info["anchor"] == f"item|{SHOE}|color=red;size=10"  # options survive the sub page
    obs, _, _, info = env.step("click[Description]")
    assert "Lightweight running shoes with a rubber sole." in obs
    env.step("click[< Prev]")
    obs, _, _, info = env.step("click[< Prev]")  # back to the results page, options cleared
    assert info["page"] == "results" and info["anchor"].endswith("|p1")
    obs, _, _, info = env.step(f"click[{SHOE}]")
    assert info["anchor"] == f"item|{SHOE}|"


def test_reviews_button_only_with_reviews(env):
    env.reset("0")
    env.step("search[coffee mug]")
    obs, _, _, info = env.step(f"click[{MUG}]")
    assert "click[Reviews]" not in info["admissible_actions"]
    product = env.data.product(MUG)
    product.reviews = [{"title": "Great", "score": 5, "body": "Love it"}]
    try:
        env.step("click[< Prev]")
        obs, _, _, info = env.step(f"click[{MUG}]")
        assert "click[Reviews]" in info["admissible_actions"]
        obs, _, _, info = env.step("click[reviews]")
        assert '"Great" [SEP] 5 [SEP] Love it' in obs and info["anchor"] == f"item:reviews|{MUG}|"
    finally:
        product.reviews = []


@pytest.mark.parametrize("action,reason", [
    ("click[Buy Now]", "not clickable"),
    ("click[]", "not clickable"),
    ("search[]", "empty"),
    ("search[   ]", "empty"),
    ("jump[shoes]", "use search"),
    ("search shoes", "use search"),
    ("click[B0SHOE0001", "use search"),
])
def test_invalid_actions_on_search_page(env, action, reason):
    obs0, info0 = env.reset("0")
    obs, r, done, info = env.step(action)
    assert not info["executable"] and r == 0.0 and not done
    assert obs.startswith("Invalid action!") and reason in obs and obs.endswith(obs0)
    assert info["anchor"] == info0["anchor"] and info["admissible_actions"] == info0["admissible_actions"]
    obs, _, _, info = env.step("search[coffee]")
    assert info["executable"]


def test_invalid_actions_leave_state_unchanged(env):
    env.reset("0")
    env.step("search[running shoe]")
    obs1, _, _, info1 = env.step("click[Next >]")
    for bad in ["search[mug]", "click[Buy Now]", f"click[{MUG}x]", "click[Description]", "click[red]", "hello"]:
        obs, _, _, info = env.step(bad)
        assert not info["executable"] and obs.endswith(obs1) and info["anchor"] == info1["anchor"]
    obs, _, _, info = env.step("click[< Prev]")
    assert info["executable"] and info["anchor"].endswith("|p1")


def test_anchor_ignores_query_spelling(env):
    env.reset("0")
    a = env.step("search[Running SHOES]")[3]["anchor"]
    env.step("click[Back to Search]")
    b = env.step("search[the running shoe]")[3]["anchor"]
    assert a == b


# ----------------------------------------------------------------------------- buying
def test_buy_exact_goal_wins(env):
    env.reset(goal_id(env, SHOE, color="navy blue", size="9"))
    for a in ["search[men's running shoes]", f"click[{SHOE}]", "click[navy blue]", "click[9]"]:
        assert env.step(a)[3]["executable"]
    obs, r, done, info = env.step("click[Buy Now]")
    assert done and r == 1.0 and info["won"] and info["score"] == 1.0
    assert info["purchased_asin"] == SHOE and info["purchased_options"] == {"color": "navy blue", "size": "9"}
    assert info["reward_info"]["r_type"] == 1.0 and info["type_reward_approx"] is True
    assert obs.startswith("Thank you for shopping with us!") and "1.0000" in obs
    assert info["anchor"] == f"done|{SHOE}|color=navy blue;size=9"
    obs, r, done, info = env.step("click[Buy Now]")  # stepping a finished episode
    assert done and r == 0.0 and not info["executable"] and info["won"]


def test_buy_partial_and_wrong_product(env):
    env.reset(goal_id(env, SHOE, color="red", size="10"))
    for a in ["search[red running shoes for men]", f"click[{SHOE}]", "click[red]", "click[9]"]:
        assert env.step(a)[3]["executable"]
    _, r, done, info = env.step("click[Buy Now]")
    assert done and r == pytest.approx(4 / 5) and not info["won"] and info["score"] == pytest.approx(0.8)
    env.reset(goal_id(env, SHOE, color="red", size="10"))
    for a in ["search[coffee mug]", f"click[{MUG}]"]:
        env.step(a)
    _, r, done, info = env.step("click[Buy Now]")
    assert done and r == 0.0 and info["reward_info"]["r_type"] == 0.0


def test_truncation_at_max_steps(tiny_dir, cache_dir):
    e = WebShopEnv(data_dir=tiny_dir, cache_dir=cache_dir, max_steps=3, spacy_model=None)
    e.reset("0")
    e.step("search[shoes]")
    e.step("click[Next >]")
    _, _, done, info = e.step("click[Next >]")
    assert done and info["truncated"] and not info["won"]


# ----------------------------------------------------------------------------- expert
def test_expert_wins_every_tiny_goal(env):
    for tid in env.list_tasks("all"):
        env.reset(tid)
        actions = env.expert_actions()
        for a in actions:
            obs, r, done, info = env.step(a)
            assert info["executable"], (a, obs)
        assert done and info["won"], (tid, actions)


def test_expert_pages_to_deep_results(env):
    env.reset(goal_id(env, SHOE, color="red", size="9"))
    acts = env.expert_actions()
    assert acts[0].startswith("search[") and acts[-1] == "click[Buy Now]"
    assert acts[-3:] == ["click[red]", "click[9]", "click[Buy Now]"]


# ----------------------------------------------------------------------------- human goals
def test_human_goals(tiny_dir, cache_dir):
    e = WebShopEnv(data_dir=tiny_dir, cache_dir=cache_dir, goals="human", test_size=1, spacy_model=None)
    assert len(e.goals) == 2  # the instruction without attributes is skipped
    shoe = next(g for g in e.goals if g["asin"] == SHOE)
    assert shoe["goal_options"] == ["navy blue", "10"]
    assert shoe["instruction_text"].startswith("i want navy blue running shoes in size 10 for men")
    assert "price lower than" in shoe["instruction_text"]
    for tid in e.list_tasks("all"):
        e.reset(tid)
        for a in e.expert_actions():
            _, r, done, info = e.step(a)
        assert done and info["won"]


def test_human_goals_need_the_file(tmp_path, cache_dir):
    d = write_tiny_dataset(tmp_path)
    with pytest.raises(WebShopDataError, match="items_human_ins.json"):
        WebShopEnv(data_dir=d, cache_dir=cache_dir, goals="human")
    with pytest.raises(ValueError):
        WebShopEnv(data_dir=d, cache_dir=cache_dir, goals="robot")


# ----------------------------------------------------------------------------- full set (streamed, on disk)
def test_full_set_files_load_through_the_disk_store(tmp_path):
    d = write_tiny_dataset(tmp_path / "data", names=FULL_FILES)
    cache = tmp_path / "cache"
    lazy = WebShopEnv(data_dir=d, cache_dir=cache, lazy_products=True, spacy_model=None)
    assert lazy.product_set == "full" and lazy.data.lazy
    assert list(cache.glob("*.products.jsonl"))
    eager = WebShopEnv(data_dir=write_tiny_dataset(tmp_path / "small"), cache_dir=cache, spacy_model=None)
    assert lazy.goals == eager.goals
    for tid in ("0", "3"):
        lazy.reset(tid)
        eager.reset(tid)
        for a in eager.expert_actions():
            o1, r1, d1, _ = lazy.step(a)
            o2, r2, d2, _ = eager.step(a)
            assert (o1, r1, d1) == (o2, r2, d2)
    # a second load reuses the store written by the first
    from envs.webshop.products import WebShopData

    again = WebShopData(d / FULL_FILES[0], d / FULL_FILES[1], cache_dir=cache, lazy=True)
    assert again.product(SHOE).title == "Red Running Shoes for Men"


# ----------------------------------------------------------------------------- robustness
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=st.lists(st.one_of(
    st.text(max_size=60),
    st.sampled_from(["search[shoes]", "click[Next >]", "click[< Prev]", "click[Back to Search]", f"click[{SHOE}]",
                     "click[red]", "click[10]", "click[Features]", "click[Buy Now]", "click[]", "search[]",
                     "click[[x]]", "search[a]b]", "CLICK [ buy now ]", "\x00click[red]\n", None, 123]),
    st.builds(lambda s: f"click[{s}]", st.text(max_size=20)),
    st.builds(lambda s: f"search[{s}]", st.text(max_size=40)),
), max_size=12))
def test_step_never_raises(env, actions):
    env.reset("0")
    for a in actions:
        obs, r, done, info = env.step(a)
        assert isinstance(obs, str) and isinstance(r, float) and 0.0 <= r <= 1.0
        assert set(STEP_INFO_KEYS) <= set(info)
        if clean_action(a) and not done:  # the base class answers empty actions itself
            assert INFO_KEYS <= set(info)
        assert info["error"] is None or not info["executable"]
        assert set(info) == set(env.step_info_keys())


def test_import_envs_does_not_import_webshop():
    code = "import sys, envs; assert not any(m.startswith('envs.webshop') for m in sys.modules); print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


def test_registry_builds_webshop(tiny_dir, cache_dir):
    from envs import make_env

    e = make_env("webshop", data_dir=tiny_dir, cache_dir=cache_dir, spacy_model=None)
    assert isinstance(e, WebShopEnv) and e.name == "webshop"


# ----------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def real_env(webshop_data, tmp_path_factory):
    return WebShopEnv(data_dir=webshop_data, cache_dir=tmp_path_factory.mktemp("ws_real"), spacy_model=None)


def test_real_data_loads(real_env, webshop_data):
    assert real_env.product_set == "small" and len(real_env.data.asins) == 1000
    assert len(real_env.goals) == 6910  # one per option combination of the 415 products with instructions
    assert len(real_env.list_tasks("test")) == 500 and len(real_env.list_tasks("train")) == 6410
    raw = json.loads((webshop_data / "items_ins_v2_1000.json").read_text())
    assert all(raw[g["asin"]]["instruction"] in g["instruction_text"] for g in real_env.goals[:50])


def test_real_expert_sample(real_env):
    ids = real_env.list_tasks("test")[:40] + real_env.list_tasks("train")[:40]
    won = 0
    for tid in ids:
        real_env.reset(tid)
        actions = real_env.expert_actions()
        assert len(actions) <= real_env.max_steps
        for a in actions:
            obs, r, done, info = real_env.step(a)
            assert info["executable"], (tid, a)
        assert done and info["score"] >= 0.75, (tid, info.get("reward_info"))
        won += info["won"]
    assert won / len(ids) >= 0.85  # WebShop's own option matching caps a few goals below 1.0


def test_real_expert_with_value_option_matching_always_wins(webshop_data, tmp_path_factory):
    e = WebShopEnv(data_dir=webshop_data, cache_dir=tmp_path_factory.mktemp("ws_real2"), spacy_model=None,
                   faithful_option_reward=False)
    for tid in e.list_tasks("test")[:60]:
        e.reset(tid)
        for a in e.expert_actions():
            _, r, done, info = e.step(a)
        assert done and info["won"], tid


# ----------------------------------------------------------------------------- prepared once, outside the workers
def test_large_sets_are_prepared_once_by_the_index_cli(tmp_path, monkeypatch):
    from envs.webshop import index as index_cli
    from envs.webshop import products as products_module
    from envs.webshop import search
    from envs.webshop.products import WebShopData

    d = write_tiny_dataset(tmp_path / "data", names=FULL_FILES)
    cache = tmp_path / "cache"
    kwargs = dict(data_dir=d, cache_dir=cache, lazy_products=True, spacy_model=None)
    with pytest.raises(WebShopDataError, match=r"python -m envs.webshop.index --data-dir .*data"):
        WebShopEnv(prepare="require", **kwargs)  # nothing built: refuse, naming the one-time command
    assert not cache.exists() or not list(cache.iterdir())
    # a build killed earlier left a temp store behind (its pid is gone): the next run deletes it
    cache.mkdir()
    stale = cache / "0123-nNone-v1.products.jsonl.tmp4194000"
    stale.write_text("partial")
    assert index_cli.main(["--data-dir", str(d), "--cache-dir", str(cache), "--product-set", "full",
                           "--disk-store", "--no-progress"]) == 0
    assert not stale.exists() and not [p for p in cache.iterdir() if ".tmp" in p.name]
    assert list(cache.glob("*.manifest.json")) and list(cache.glob("*.npz"))
    WebShopData._CACHE.clear()
    search._INDEX_CACHE.clear()

    def no_parse(*args, **kwargs):
        raise AssertionError("the products file was parsed again")

    monkeypatch.setattr(products_module, "iter_json_array", no_parse)
    env = WebShopEnv(prepare="require", **kwargs)  # store + manifest + index: nothing parsed or built
    assert env.data.index_ready() and env.data._index is not None
    env.reset("0")
    obs, _, _, info = env.step("search[red running shoes for men]")
    assert info["executable"] and SHOE in obs


def test_index_is_ready_before_the_first_step_and_failed_builds_leave_no_temp(tmp_path):
    from envs.webshop.products import WebShopData

    d = write_tiny_dataset(tmp_path / "data")
    env = WebShopEnv(data_dir=d, cache_dir=tmp_path / "cache", spacy_model=None)
    assert env.data._index is not None  # built in the constructor (the pool's open), not in the first search
    broken = write_tiny_dataset(tmp_path / "broken", names=FULL_FILES)
    text = (broken / FULL_FILES[0]).read_text()
    (broken / FULL_FILES[0]).write_text(text[: len(text) // 2])  # cut mid-file: the build fails
    with pytest.raises(ValueError):
        WebShopData(broken / FULL_FILES[0], broken / FULL_FILES[1], cache_dir=tmp_path / "c2", lazy=True)
    assert not [p.name for p in (tmp_path / "c2").iterdir() if ".tmp" in p.name]
    with pytest.raises(ValueError, match="prepare"):
        WebShopEnv(data_dir=d, cache_dir=tmp_path / "cache", spacy_model=None, prepare="sometimes")


def test_human_goals_file_names_and_formats(tmp_path, cache_dir):
    """items_human_ins.json or human_goals.json, read by content; WebShop's instruction-only list is refused
    with a message saying why, and the file used is reported."""
    from envs.webshop.fixtures import tiny_human_instructions

    d = write_tiny_dataset(tmp_path / "a")
    (d / "human_goals.json").write_text(json.dumps(tiny_human_instructions()))  # the dict format, other name
    e = WebShopEnv(data_dir=d, cache_dir=cache_dir, goals="human", test_size=1, spacy_model=None)
    assert e.goal_source == "human_goals.json" and e.reset("0")[1]["goal_source"] == "human_goals.json"
    assert len(e.goals) == 2
    (d / "human_goals.json").write_text(json.dumps(["i want red shoes", "a mug please"]))  # WebShop's own list
    with pytest.raises(WebShopDataError, match="list of 2 instruction strings.*items_human_ins.json"):
        WebShopEnv(data_dir=d, cache_dir=cache_dir, goals="human", spacy_model=None)
    both = write_tiny_dataset(tmp_path / "b", human=True)
    (both / "human_goals.json").write_text(json.dumps(["x"]))
    e = WebShopEnv(data_dir=both, cache_dir=cache_dir, goals="human", test_size=1, spacy_model=None)
    assert e.goal_source == "items_human_ins.json"  # the full format wins when both are there
    assert WebShopEnv(data_dir=both, cache_dir=cache_dir, spacy_model=None).reset("0")[1]["goal_source"] == \
        "synthetic"
