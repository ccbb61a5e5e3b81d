"""WebShop search: the Lucene-like analyzer, SmallFloat norms, BM25 maths, tie-break, caching, and parity with a
real Anserini/Lucene index of the 1000-product set (reference results recorded from Anserini 0.14.3)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nltk")
pytest.importorskip("regex")

from envs.webshop import search as S  # noqa: E402

REF = Path(__file__).with_name("webshop_lucene_reference.json")


# ----------------------------------------------------------------------------- SmallFloat
def test_smallfloat_small_lengths_are_exact():
    for n in range(0, 40):
        assert S.byte4_to_int(S.int_to_byte4(n)) == n
    assert S.NUM_FREE_VALUES == 24


@pytest.mark.parametrize("length,byte,decoded", [(24, 24, 24), (40, 40, 40), (41, 40, 40), (100, 57, 96),
                                                 (1000, 87, 984), (2**31 - 1, 255, 2013265944)])
def test_smallfloat_known_values(length, byte, decoded):
    assert S.int_to_byte4(length) == byte
    assert S.byte4_to_int(byte) == decoded


def test_smallfloat_is_monotonic_and_rounds_down():
    prev = -1
    for n in list(range(0, 3000)) + [10**6, 10**9]:
        b = S.int_to_byte4(n)
        assert 0 <= b <= 255 and b >= prev
        assert S.byte4_to_int(b) <= n
        prev = b


# ----------------------------------------------------------------------------- analyzer
@pytest.mark.parametrize("text,terms", [
    ("Women's Running Shoes", ["women", "run", "shoe"]),
    ("The quick brown foxes are in the houses", ["quick", "brown", "fox", "hous"]),
    ("Material:SOLID WOOD", ["material:solid", "wood"]),
    ("3.5mm jack, 1,000 mAh", ["3.5mm", "jack", "1,000", "mah"]),
    ("U.S.A. made; e.g. cotton", ["u.s.a", "made", "e.g", "cotton"]),
    ("x_y-z 12:30", ["x_y", "z", "12", "30"]),
    ("don't O’Neil’s", ["don't", "o’neil"]),
    ("technology generalizations family happy sky", ["technolog", "gener", "famili", "happi", "sky"]),  # as Lucene
    ("the and of a", []),
    ("", []),
])
def test_analyzer(text, terms):
    assert S.analyze(text) == terms


def test_tokenizer_cjk_emoji_and_long_tokens():
    assert S.tokenize("中文 カタカナ ★®") == ["中", "文", "カタカナ", "★", "®"]
    long = "a" * 600
    assert [len(t) for t in S.tokenize(long)] == [255, 255, 90]


def test_stop_words_are_lucenes_33():
    assert len(S.ENGLISH_STOP_WORDS) == 33
    assert {"the", "with", "will", "such", "their"} <= S.ENGLISH_STOP_WORDS
    assert "from" not in S.ENGLISH_STOP_WORDS


# ----------------------------------------------------------------------------- BM25 maths
def _tiny_index():
    return S.BM25Index.build([("d1", "apple banana"), ("d2", "apple apple cherry"), ("d3", "cherry")])


def test_idf_formula():
    assert S.idf(3, 1) == pytest.approx(math.log(1 + 2.5 / 1.5), rel=1e-6)
    idx = _tiny_index()
    assert idx.idf[idx.vocab["appl"]] == pytest.approx(math.log(1.6), rel=1e-6)


def test_bm25_hand_computed_scores():
    # N=3, avgdl=(2+3+1)/3=2; "apple": df=2 -> idf=ln(1.6)
    # d1: tf=1, dl=2 -> idf*(1 - 1/(1 + 1/(0.9*(0.6+0.4*2/2)))) = idf * 0.526316
    # d2: tf=2, dl=3 -> idf*(1 - 1/(1 + 2/(0.9*(0.6+0.4*3/2)))) = idf * 0.649351
    idx = _tiny_index()
    idf = math.log(1.6)
    hits = idx.search("apple")
    assert [d for d, _ in hits] == ["d2", "d1"]
    assert hits[0][1] == pytest.approx(idf * (1 - 1 / (1 + 2 / 1.08)), rel=1e-5)
    assert hits[1][1] == pytest.approx(idf * (1 - 1 / (1 + 1 / 0.9)), rel=1e-5)
    assert idx.avgdl == pytest.approx(2.0)


def test_query_term_counts_are_boosts():
    idx = _tiny_index()
    single = dict(idx.search("apple"))
    double = dict(idx.search("apple apple"))
    for d in single:
        assert double[d] == pytest.approx(2 * single[d], rel=1e-6)


def test_multi_term_scores_add_up():
    idx = _tiny_index()
    a, c = dict(idx.search("apple")), dict(idx.search("cherry"))
    both = dict(idx.search("apple cherry"))
    assert both["d2"] == pytest.approx(a["d2"] + c["d2"], rel=1e-6)
    assert set(both) == {"d1", "d2", "d3"}


def test_ties_are_broken_by_doc_id_string():
    idx = S.BM25Index.build([("b", "red shoe"), ("c", "red shoe"), ("a", "red shoe"), ("z", "blue")])
    assert [d for d, _ in idx.search("red")] == ["a", "b", "c"]


def test_only_matching_docs_and_k():
    idx = S.BM25Index.build([(f"d{i:02d}", "shoe" if i % 2 else "mug") for i in range(40)])
    assert len(idx.search("shoe", k=50)) == 20
    assert len(idx.search("shoe", k=5)) == 5
    assert idx.search("the") == [] and idx.search("nothing") == []


def test_doc_length_norm_quantised():
    idx = S.BM25Index.build([("long", " ".join(f"w{i}" for i in range(100))), ("short", "w1")])
    assert idx.doc_length("long") == 96 and idx.doc_length("short") == 1
    assert idx.avgdl == pytest.approx(50.5)  # the average uses the exact lengths


def test_float32_arithmetic():
    idx = _tiny_index()
    _, scores = idx.score_all("apple cherry banana")
    assert scores.dtype == np.float32


def test_save_load_roundtrip_and_cache(tmp_path):
    idx = _tiny_index()
    idx.save(tmp_path / "i.npz")
    back = S.BM25Index.load(tmp_path / "i.npz")
    assert back.search("apple cherry") == idx.search("apple cherry")
    calls = []

    def docs():
        calls.append(1)
        return [("x", "hello world")]

    key = S.index_cache_key("test-source", str(tmp_path))
    first = S.get_or_build_index(key, docs, tmp_path)
    S._INDEX_CACHE.pop(key)
    second = S.get_or_build_index(key, docs, tmp_path)  # from disk
    third = S.get_or_build_index(key, docs, tmp_path)  # from memory
    assert calls == [1] and second is third and first.search("hello") == second.search("hello")
    assert (tmp_path / f"{key}.npz").exists()


def test_corrupt_cache_is_rebuilt(tmp_path):
    key = S.index_cache_key("corrupt", str(tmp_path))
    (tmp_path / f"{key}.npz").write_bytes(b"not an npz")
    idx = S.get_or_build_index(key, lambda: [("x", "hello")], tmp_path)
    assert idx.search("hello")[0][0] == "x"


# ----------------------------------------------------------------------------- parity with Lucene (real data)
def test_analyzer_matches_lucene_reference():
    ref = json.loads(REF.read_text(encoding="utf-8"))
    for case in ref["analyzer"]:
        assert S.analyze(case["text"]) == case["terms"], case["text"]


def test_rankings_match_lucene_on_the_1000_products(webshop_data, tmp_path):
    from envs.webshop.products import WebShopData

    data = WebShopData.load(webshop_data / "items_shuffle_1000.json", webshop_data / "items_ins_v2_1000.json",
                            cache_dir=tmp_path)
    ref = json.loads(REF.read_text(encoding="utf-8"))
    assert len(ref["queries"]) > 100
    for case in ref["queries"]:
        hits = data.index.search(case["q"], k=50)
        assert len(hits) == case["n"], case["q"]
        assert [a for a, _ in hits[:10]] == case["top"], case["q"]
        for (_, mine), theirs in zip(hits, case["scores"]):
            assert abs(mine - theirs) < 2e-4  # Anserini reports scores rounded to 4 decimals
