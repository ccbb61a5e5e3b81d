"""Pure-Python BM25 search that ranks like WebShop's pyserini/Lucene 8 index.

WebShop searches a Lucene index built by pyserini/Anserini (``DefaultEnglishAnalyzer``, BM25 with k1=0.9, b=0.4).
This module reproduces that ranking without Java:

Analyzer (Anserini ``DefaultEnglishAnalyzer``, i.e. Lucene's ``EnglishAnalyzer`` chain):
  1. ``StandardTokenizer``: Unicode UAX#29 word-break rules as Lucene's grammar implements them. Letters and
     digits glue (``b06y3``, ``3.5mm``); ``:`` ``.`` ``'`` keep two letters together (``material:solid``,
     ``e.g``, ``don't``); ``,`` ``;`` ``.`` ``'`` keep two digits together (``1,000``, ``3.5``); ``_`` joins
     anything; CJK ideographs and hiragana are one token per character; Thai/Lao/Khmer/Myanmar runs stay whole;
     emoji (including ``©`` ``®`` ``™``) are tokens; tokens longer than 255 chars are cut into 255-char pieces;
     everything else (spaces, most punctuation and symbols) separates tokens and is dropped.
  2. English possessive filter: a trailing ``'s`` / ``’s`` / ``＇s`` is removed.
  3. Lower-casing (per code point, as Java's ``Character.toLowerCase``).
  4. Lucene's 33 English stop words are removed (they do not count towards the document length).
  5. Porter stemmer as Lucene's ``PorterStemFilter`` (``nltk`` ``PorterStemmer`` in ``MARTIN_EXTENSIONS`` mode).

Scoring (Lucene 8 ``BM25Similarity``), all in float32 like Lucene:
  * ``idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))``
  * document lengths are stored as 1-byte norms (``SmallFloat.intToByte4``) and decoded with ``byte4ToInt``;
    ``avgdl = sum of all (unquantised) lengths / N``
  * ``normInv[d] = 1 / (k1 * ((1 - b) + b * len(d) / avgdl))``
  * per term: ``w = boost * idf``, ``s = w - w / (1 + tf * normInv)``; a query's term scores are summed in double
    and cast to float (Lucene's BooleanScorer).
  * the query is a bag of words: each distinct analysed term once, with ``boost`` = its count in the query
    (Anserini ``BagOfWordsQueryGenerator``).
  * only documents that contain at least one query term are hits; hits are sorted by score (descending), ties
    broken by the document id string (ascending, Anserini ``BREAK_SCORE_TIES_BY_DOCID``).

The index is a CSR inverted index in numpy arrays. It is built once per product file and cached on disk
(``$SPA_RL_CACHE`` or ``~/.cache/spa_rl``, under ``webshop/``) and in-process.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

logger = logging.getLogger(__name__)

INDEX_FORMAT_VERSION = 2  # bump when the analyzer or the on-disk layout changes (invalidates cached indexes)
K1 = 0.9
B = 0.4
MAX_TOKEN_LENGTH = 255

# Lucene's EnglishAnalyzer.ENGLISH_STOP_WORDS_SET (33 words)
ENGLISH_STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these "
    "they this to was will with".split()
)


# ----------------------------------------------------------------------------- SmallFloat (Lucene 8 norms)
def _long_to_int4(i: int) -> int:
    """Lucene ``SmallFloat.longToInt4``: a float-like encoding with a 3-bit mantissa."""
    if i < 0:
        raise ValueError(f"only non-negative values can be encoded, got {i}")
    num_bits = i.bit_length()
    if num_bits < 4:  # subnormal value
        return i
    shift = num_bits - 4
    encoded = (i >> shift) & 0x07  # keep the 4 most significant bits, drop the implicit leading one
    return encoded | ((shift + 1) << 3)


def _int4_to_long(i: int) -> int:
    bits = i & 0x07
    shift = (i >> 3) - 1
    return bits if shift == -1 else (bits | 0x08) << shift


_MAX_INT4 = _long_to_int4(2**31 - 1)  # 231
NUM_FREE_VALUES = 255 - _MAX_INT4  # 24: lengths below this are stored exactly


def int_to_byte4(i: int) -> int:
    """Lucene ``SmallFloat.intToByte4`` (returned as an unsigned byte 0..255)."""
    if i < 0:
        raise ValueError(f"only non-negative values can be encoded, got {i}")
    if i < NUM_FREE_VALUES:
        return i
    return NUM_FREE_VALUES + _long_to_int4(i - NUM_FREE_VALUES)


def byte4_to_int(b: int) -> int:
    """Lucene ``SmallFloat.byte4ToInt`` for an unsigned byte 0..255."""
    b &= 0xFF
    if b < NUM_FREE_VALUES:
        return b
    return NUM_FREE_VALUES + _int4_to_long(b - NUM_FREE_VALUES)


LENGTH_TABLE = np.array([byte4_to_int(i) for i in range(256)], dtype=np.float32)


# ----------------------------------------------------------------------------- analyzer

def _ranges(spec: str) -> str:
    """A regex character-class body from 'A9 AE 2194-2199 ...' (hex code points and ranges)."""
    out = []
    for part in spec.split():
        lo, _, hi = part.partition("-")
        out.append(f"\\U{int(lo, 16):08X}" + (f"-\\U{int(hi, 16):08X}" if hi else ""))
    return "".join(out)


# Unicode 11.0 emoji-data (the tables Lucene 8's StandardTokenizer grammar was generated from)
_EXT_PICT = _ranges(
    "A9 AE 203C 2049 2122 2139 2194-2199 21A9-21AA 231A-231B 2328 2388 23CF 23E9-23F3 23F8-23FA 24C2 25AA-25AB "
    "25B6 25C0 25FB-25FE 2600-2605 2607-2612 2614-2685 2690-2705 2708-2712 2714 2716 271D 2721 2728 2733-2734 "
    "2744 2747 274C 274E 2753-2755 2757 2763-2767 2795-2797 27A1 27B0 27BF 2934-2935 2B05-2B07 2B1B-2B1C 2B50 "
    "2B55 3030 303D 3297 3299 1F000-1F0FF 1F10D-1F10F 1F12F 1F16C-1F171 1F17E-1F17F 1F18E 1F191-1F19A "
    "1F1AD-1F1E5 1F201-1F20F 1F21A 1F22F 1F232-1F23A 1F23C-1F23F 1F249-1F3FA 1F400-1F53D 1F546-1F64F "
    "1F680-1F6FF 1F774-1F77F 1F7D5-1F7FF 1F80C-1F80F 1F848-1F84F 1F85A-1F85F 1F888-1F88F 1F8AE-1F8FF "
    "1F90C-1F93A 1F93C-1F945 1F947-1FFFD"
)
_EMOJI_MOD = _ranges("1F3FB-1F3FF")
_EMOJI_MOD_BASE = _ranges(
    "261D 26F9 270A-270D 1F385 1F3C2-1F3C4 1F3C7 1F3CA-1F3CC 1F442-1F443 1F446-1F450 1F466-1F469 1F46E "
    "1F470-1F478 1F47C 1F481-1F483 1F485-1F487 1F4AA 1F574-1F575 1F57A 1F590 1F595-1F596 1F645-1F647 "
    "1F64B-1F64F 1F6A3 1F6B4-1F6B6 1F6C0 1F6CC 1F918-1F91C 1F91E-1F91F 1F926 1F930-1F939 1F93D-1F93E "
    "1F9B5-1F9B6 1F9B8-1F9B9 1F9D1-1F9DD"
)

@lru_cache(maxsize=1)
def _token_regex():
    import regex  # installed with nltk; supports Unicode Word_Break / emoji properties

    x = r"[\p{WB=Extend}\p{WB=Format}\p{WB=ZWJ}]*"  # WB4: absorbed after any character
    ahletter = rf"(?:[\p{{WB=ALetter}}\p{{WB=Hebrew_Letter}}]{x})"
    hebrew = rf"(?:\p{{WB=Hebrew_Letter}}{x})"
    numeric = rf"(?:[\p{{WB=Numeric}}[\p{{Block=Halfwidth_And_Fullwidth_Forms}}&&\p{{Nd}}]]{x})"
    katakana = rf"(?:\p{{WB=Katakana}}{x})"
    mid_letter = rf"(?:[\p{{WB=MidLetter}}\p{{WB=MidNumLet}}\p{{WB=Single_Quote}}]{x})"
    mid_num = rf"(?:[\p{{WB=MidNum}}\p{{WB=MidNumLet}}\p{{WB=Single_Quote}}]{x})"
    ext_num_let = rf"(?:\p{{WB=ExtendNumLet}}{x})"
    single_quote = rf"(?:\p{{WB=Single_Quote}}{x})"
    double_quote = rf"(?:\p{{WB=Double_Quote}}{x})"
    core = (
        rf"(?:{katakana}(?:{ext_num_let}*{katakana})*"
        rf"|(?:{hebrew}(?:{single_quote}|{double_quote}{hebrew})"
        rf"|{numeric}(?:(?:{ext_num_let}*|{mid_num}){numeric})*"
        rf"|{ahletter}(?:(?:{ext_num_let}*|{mid_letter}){ahletter})*)+)"
    )
    word = rf"{ext_num_let}*{core}(?:{ext_num_let}+{core})*{ext_num_let}*"
    # Lucene's EMOJI rule, with Lucene's Unicode 11 emoji tables (newer Unicode data differs, e.g. for U+2605)
    fe = r"[[\p{WB=Extend}\p{WB=Format}]--[\uFE0E\uFE0F]]*"  # ZWJ is matched explicitly between units
    emo_char = rf"(?:[{_EXT_PICT}]{fe})"  # ExtPict | (Emoji - RKAM) == ExtPict in Unicode 11
    emo_unit = rf"(?:\u200D*{emo_char}\uFE0F?|(?:\u200D*[{_EMOJI_MOD_BASE}]{fe})?[{_EMOJI_MOD}]{fe})"
    emoji = (
        rf"(?:{emo_unit}(?:(?:\u200D+{emo_unit})*\u200D*|[\U000E0020-\U000E007E]+\U000E007F)"
        rf"|[0-9#*]{fe}\uFE0F?\u20E3{fe}"
        rf"|(?:\p{{WB=Regional_Indicator}}{x}){{2}})"
    )
    south_east_asian = rf"(?:\p{{Line_Break=Complex_Context}}{x})+"
    han = rf"\p{{Script=Han}}{x}"
    hiragana = rf"\p{{Script=Hiragana}}{x}"
    return regex.compile(rf"{emoji}|{word}|{south_east_asian}|{han}|{hiragana}", regex.V1)


def tokenize(text: str) -> list[str]:
    """Lucene ``StandardTokenizer`` (see the module docstring): the raw tokens, case preserved."""
    out = []
    for m in _token_regex().finditer(text):
        tok = m.group()
        if len(tok) > MAX_TOKEN_LENGTH:
            out.extend(tok[i:i + MAX_TOKEN_LENGTH] for i in range(0, len(tok), MAX_TOKEN_LENGTH))
        else:
            out.append(tok)
    return out


def _java_lower(tok: str) -> str:
    if tok.isascii():
        return tok.lower()
    # Java lower-cases per code point into exactly one code point ('İ' -> 'i'); Python may expand it
    return "".join((c.lower() or c)[0] for c in tok)


@lru_cache(maxsize=1)
def _stemmer():
    from nltk.stem.porter import PorterStemmer

    return PorterStemmer(mode=PorterStemmer.MARTIN_EXTENSIONS)


_STEM_CACHE: dict[str, str] = {}


def stem(word: str) -> str:
    s = _STEM_CACHE.get(word)
    if s is None:
        s = _stemmer().stem(word, to_lowercase=False)
        if len(_STEM_CACHE) < 2_000_000:
            _STEM_CACHE[word] = s
    return s


def analyze(text: str) -> list[str]:
    """The full analyzer chain: the terms Lucene would index/search for ``text``."""
    terms = []
    for tok in tokenize(text):
        if len(tok) >= 2 and tok[-1] in "sS" and tok[-2] in "'\u2019\uff07":
            tok = tok[:-2]
        tok = _java_lower(tok)
        if not tok or tok in ENGLISH_STOP_WORDS:
            continue
        terms.append(stem(tok))
    return terms


# ----------------------------------------------------------------------------- index
def _pack(strings: Sequence[str]) -> np.ndarray:
    """Newline-joined UTF-8 bytes (terms and asins never contain a newline): saved without pickle."""
    return np.frombuffer("\n".join(strings).encode("utf-8"), dtype=np.uint8)


def _unpack(arr: np.ndarray) -> list[str]:
    text = arr.tobytes().decode("utf-8")
    return text.split("\n") if text else []


def default_cache_dir() -> Path:
    root = os.environ.get("SPA_RL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "spa_rl"
    )
    return Path(root) / "webshop"


class BM25Index:
    """An inverted index over (doc id, text) pairs, scored like Lucene 8 BM25 (see the module docstring)."""

    def __init__(self, doc_ids: Sequence[str], vocab: dict[str, int], indptr: np.ndarray, post_docs: np.ndarray,
                 post_tfs: np.ndarray, norms: np.ndarray, sum_total_tf: int, k1: float = K1, b: float = B):
        self.doc_ids = list(doc_ids)
        self.vocab = vocab
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.post_docs = np.asarray(post_docs, dtype=np.int32)
        self.post_tfs = np.asarray(post_tfs, dtype=np.float32)
        self.norms = np.asarray(norms, dtype=np.uint8)
        self.sum_total_tf = int(sum_total_tf)
        self.k1, self.b = float(k1), float(b)
        n = len(self.doc_ids)
        self.num_docs = n
        # rank of each doc id string, for the tie-break
        order = sorted(range(n), key=self.doc_ids.__getitem__)
        self.id_rank = np.empty(n, dtype=np.int64)
        self.id_rank[order] = np.arange(n)
        self._doc_index = {d: i for i, d in enumerate(self.doc_ids)}
        # Lucene: avgdl = (float) (sumTotalTermFreq / (double) docCount); cache[i] = 1 / (k1 * ((1-b) + b*L[i]/avgdl))
        f32 = np.float32
        self.avgdl = f32(self.sum_total_tf / n) if n else f32(1.0)
        k1f, bf = f32(self.k1), f32(self.b)
        one_minus_b = f32(f32(1.0) - bf)
        inner = (one_minus_b + (bf * LENGTH_TABLE) / self.avgdl).astype(f32)
        self.norm_inverse_table = (f32(1.0) / (k1f * inner).astype(f32)).astype(f32)
        self._doc_norm_inverse = self.norm_inverse_table[self.norms]
        df = np.diff(self.indptr).astype(np.float64)
        self.idf = np.log(1.0 + (n - df + 0.5) / (df + 0.5)).astype(np.float32)

    # ------------------------------------------------------------------ build / io
    @classmethod
    def build(cls, docs: Iterable[tuple[str, str]], k1: float = K1, b: float = B) -> "BM25Index":
        doc_ids: list[str] = []
        vocab: dict[str, int] = {}
        rows_term: list[np.ndarray] = []
        rows_doc: list[np.ndarray] = []
        rows_tf: list[np.ndarray] = []
        lengths: list[int] = []
        for d, (doc_id, text) in enumerate(docs):
            doc_ids.append(str(doc_id))
            terms = analyze(text)
            lengths.append(len(terms))
            counts = Counter(terms)
            tids = np.fromiter((vocab.setdefault(t, len(vocab)) for t in counts), dtype=np.int32, count=len(counts))
            rows_term.append(tids)
            rows_doc.append(np.full(len(counts), d, dtype=np.int32))
            rows_tf.append(np.fromiter(counts.values(), dtype=np.float32, count=len(counts)))
        if rows_term:
            term = np.concatenate(rows_term)
            doc = np.concatenate(rows_doc)
            tf = np.concatenate(rows_tf)
        else:
            term = doc = np.zeros(0, np.int32)
            tf = np.zeros(0, np.float32)
        order = np.lexsort((doc, term))  # by term, then doc
        indptr = np.zeros(len(vocab) + 1, dtype=np.int64)
        np.cumsum(np.bincount(term, minlength=len(vocab)), out=indptr[1:])
        norms = np.array([int_to_byte4(n) for n in lengths], dtype=np.uint8)
        return cls(doc_ids, vocab, indptr, doc[order], tf[order], norms, sum(lengths), k1, b)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        terms = [None] * len(self.vocab)
        for t, i in self.vocab.items():
            terms[i] = t
        tmp = str(path.with_name(f"{path.stem}.tmp{os.getpid()}.npz"))  # np.savez keeps a .npz name as is
        try:
            np.savez(tmp, version=np.array(INDEX_FORMAT_VERSION), doc_ids=_pack(self.doc_ids), terms=_pack(terms),
                     indptr=self.indptr, post_docs=self.post_docs,
                     post_tfs=self.post_tfs, norms=self.norms, sum_total_tf=np.array(self.sum_total_tf),
                     k1=np.array(self.k1), b=np.array(self.b))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: str | Path) -> "BM25Index":
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != INDEX_FORMAT_VERSION:
                raise ValueError(f"index {path} has format {int(z['version'])}, expected {INDEX_FORMAT_VERSION}")
            terms = _unpack(z["terms"])
            return cls(_unpack(z["doc_ids"]), {t: i for i, t in enumerate(terms)}, z["indptr"], z["post_docs"],
                       z["post_tfs"], z["norms"], int(z["sum_total_tf"]), float(z["k1"]), float(z["b"]))

    # ------------------------------------------------------------------ search
    def query_terms(self, query: str) -> Counter:
        return Counter(analyze(query))

    def score_all(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        """(doc indices of all hits, their float32 scores), unsorted."""
        f32 = np.float32
        acc = hit = None
        for term, count in self.query_terms(query).items():
            tid = self.vocab.get(term)
            if tid is None:
                continue
            lo, hi = self.indptr[tid], self.indptr[tid + 1]
            docs = self.post_docs[lo:hi]
            weight = f32(f32(count) * self.idf[tid])
            s = weight - weight / (f32(1.0) + self.post_tfs[lo:hi] * self._doc_norm_inverse[docs])
            if acc is None:
                acc = np.zeros(self.num_docs, dtype=np.float64)
                hit = np.zeros(self.num_docs, dtype=bool)
            acc[docs] += s.astype(np.float64)  # doc ids are unique within a posting list
            hit[docs] = True
        if acc is None:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        hits = np.flatnonzero(hit)
        return hits, acc[hits].astype(np.float32)

    def search(self, query: str, k: int = 50) -> list[tuple[str, float]]:
        """The top ``k`` (doc id, score) pairs, in Lucene/Anserini order."""
        hits, scores = self.score_all(query)
        if len(hits) == 0:
            return []
        if len(hits) > k:  # cheap pre-cut: keep everything that scores at least the k-th best
            kth = np.partition(scores, len(scores) - k)[len(scores) - k]
            keep = scores >= kth
            hits, scores = hits[keep], scores[keep]
        order = np.lexsort((self.id_rank[hits], -scores))[:k]
        return [(self.doc_ids[hits[i]], float(scores[i])) for i in order]

    def doc_length(self, doc_id: str) -> int:
        return int(LENGTH_TABLE[self.norms[self._doc_index[doc_id]]])


# ----------------------------------------------------------------------------- caching
_INDEX_CACHE: dict[str, BM25Index] = {}


def index_cache_key(source_hash: str, extra: str = "") -> str:
    h = hashlib.sha256(f"v{INDEX_FORMAT_VERSION}|k1={K1}|b={B}|{source_hash}|{extra}".encode()).hexdigest()
    return h[:32]


def get_or_build_index(key: str, docs_factory, cache_dir: str | Path | None = None,
                       use_disk_cache: bool = True) -> BM25Index:
    """The index for ``key``: from this process, else from ``cache_dir/<key>.npz``, else built from
    ``docs_factory()`` (an iterable of (doc id, text)) and saved there."""
    path = Path(cache_dir or default_cache_dir()) / f"{key}.npz"
    idx = _INDEX_CACHE.get(key)
    if idx is not None:
        if use_disk_cache and not path.exists():  # built in this process for another cache folder
            try:
                idx.save(path)
            except OSError as exc:
                logger.warning("could not write WebShop index cache %s: %r", path, exc)
        return idx
    if use_disk_cache and path.exists():
        try:
            idx = BM25Index.load(path)
        except Exception as exc:  # a corrupt or stale cache file is rebuilt, not fatal
            logger.warning("could not load cached WebShop index %s (%r); rebuilding", path, exc)
    if idx is None:
        idx = BM25Index.build(docs_factory())
        if use_disk_cache:
            try:
                idx.save(path)
            except OSError as exc:
                logger.warning("could not write WebShop index cache %s: %r", path, exc)
    _INDEX_CACHE[key] = idx
    return idx


def idf(n_docs: int, df: int) -> float:
    """Lucene 8 BM25 idf (float32), for tests and documentation."""
    return float(np.float32(math.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))))
