"""WebShop product and goal data: finding the files, streaming them, normalising products, building goals.

Data files (``data_dir`` argument, else ``$SPA_DATA/webshop``, see :mod:`envs.paths`):

* small set (1000 products, the WebShop default): ``items_shuffle_1000.json`` + ``items_ins_v2_1000.json``
* full set (1.18M products): ``items_shuffle.json`` + ``items_ins_v2.json``
* human goals (optional): ``items_human_ins.json`` (``{asin: [{instruction, instruction_attributes,
  instruction_options, ...}]}``, WebShop's ``baseline_models/data/``). :func:`find_human_goals_file` also looks for
  ``human_goals.json`` and reads whichever exists by its content: WebShop's own ``human_goals.json`` is only the
  list of the 12,087 instruction strings (no product, attributes or options, so no reward can be computed from
  it), and is refused with a message saying so; a file of that name in the ``items_human_ins`` format is used.

Product normalisation follows what WebShop's loader does to a raw record: ``Title`` = ``name``, ``Description``
= ``full_description``, ``BulletPoints`` = ``small_description`` (a string becomes a one-item list), ``pricing``
(``"$a"`` or ``"$a - $b"``) becomes floats and a price tag (``$a`` / ``$a to $b``; missing -> ``$100.0``),
option names are lower-cased and option values are stripped, lower-cased and have ``/`` replaced by ``" | "``,
``query`` is lower-cased and stripped, ``Attributes`` come from ``items_ins_v2`` (``['DUMMY_ATTR']`` when the
product has no entry). Duplicate ASINs and ASINs that are ``'nan'`` or longer than 10 characters are skipped.

Prices. A product priced as a range gets one fixed price drawn uniformly in the range. WebShop draws it from the
global RNG at load time; here it is drawn from ``random.Random("<price_seed>:<asin>")`` so it does not depend on
load order or on other products (deterministic; ``price_seed`` defaults to 233).

Goals (see :func:`synthetic_goals` / :func:`human_goals`). Goal order: WebShop builds goals in product-file order
and then shuffles them with ``random.seed(233); random.shuffle(goals)``; the same is done here with
``random.Random(233).shuffle``, so the goal *order* (asin and options of goal ``i``) is the one WebShop's
``reset(session=i)`` sees. The goal price cap (``price lower than X dollars``) is random in WebShop too; here it is
drawn from ``random.Random("<goal_seed>:<asin>")``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import random
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Iterator

logger = logging.getLogger(__name__)

SMALL_FILES = ("items_shuffle_1000.json", "items_ins_v2_1000.json")
FULL_FILES = ("items_shuffle.json", "items_ins_v2.json")
HUMAN_FILE = "items_human_ins.json"
HUMAN_FILES = (HUMAN_FILE, "human_goals.json")  # looked for in this order
GOAL_SHUFFLE_SEED = 233
PRICE_RANGE = [10.0 * i for i in range(1, 100)]  # candidate goal price caps, as WebShop
DEFAULT_PRICE = 100.0
NO_PRICE_CAP = 1_000_000
STORE_VERSION = 1  # bump when Product normalisation changes (invalidates cached on-disk product stores)

DATA_HELP = (
    "WebShop data not found. Pass data_dir=... or put in $SPA_DATA/webshop (see envs.paths) either the small set "
    "(items_shuffle_1000.json + items_ins_v2_1000.json) or the full set (items_shuffle.json + items_ins_v2.json). "
    "The small files ship with this project's shared data (shared/data/webshop); both sets come from WebShop's "
    "setup script (github.com/princeton-nlp/WebShop: ./setup.sh -d small | -d all). Human goals additionally need "
    "items_human_ins.json (WebShop repo, baseline_models/data/)."
)


class WebShopDataError(FileNotFoundError):
    """The WebShop data files are missing or unusable."""


# ----------------------------------------------------------------------------- files
def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir``, else ``envs.paths.env_data_dir("webshop")``; raise :class:`WebShopDataError` (saying how to get
    the data)."""
    raw = data_dir
    if raw is None:
        from envs.paths import data_root, env_data_dir

        raw = env_data_dir("webshop")
        if raw is None:
            raise WebShopDataError(f"No folder {data_root() / 'webshop'}. {DATA_HELP}")
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise WebShopDataError(f"{path} is not a directory. {DATA_HELP}")
    return path


def find_human_goals_file(data_dir: Path) -> Path | None:
    """The first of :data:`HUMAN_FILES` present in ``data_dir`` (None when neither is)."""
    for name in HUMAN_FILES:
        if (Path(data_dir) / name).is_file():
            return Path(data_dir) / name
    return None


def load_human_instructions(path: Path) -> dict[str, list[dict]]:
    """``{asin: [instruction dicts]}`` from a human-goals file in the ``items_human_ins`` format; a clear
    :class:`WebShopDataError` for WebShop's instruction-only ``human_goals.json`` (a list of strings) or any other
    shape."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
        return data
    if isinstance(data, list) and all(isinstance(v, str) for v in data):
        raise WebShopDataError(
            f"{path} is a list of {len(data)} instruction strings (WebShop's baseline_models/data/human_goals.json): "
            "it names no product, attributes or options, so no reward can be computed from it. Human goals need "
            f"{HUMAN_FILE} ({{asin: [{{instruction, instruction_attributes, instruction_options}}]}}, same folder of "
            "the WebShop repo); put it beside the product files, or use goals='synthetic'.")
    raise WebShopDataError(f"{path}: expected {HUMAN_FILE}'s format {{asin: [instruction dicts]}}, "
                           f"got a JSON {type(data).__name__}")


def find_product_files(data_dir: Path, product_set: str = "auto") -> tuple[Path, Path, str]:
    """(products file, attributes file, 'small'|'full'). ``auto`` takes the small set when present, else the full."""
    if product_set not in ("auto", "small", "full"):
        raise ValueError(f"product_set must be 'auto', 'small' or 'full', got {product_set!r}")
    candidates = {"small": SMALL_FILES, "full": FULL_FILES}
    order = ["small", "full"] if product_set == "auto" else [product_set]
    for name in order:
        prod, attr = (data_dir / f for f in candidates[name])
        if prod.is_file() and attr.is_file():
            return prod, attr, name
    wanted = " or ".join(" + ".join(candidates[n]) for n in order)
    raise WebShopDataError(f"{data_dir} has no {wanted}. {DATA_HELP}")


def file_fingerprint(path: Path, full_hash_limit: int = 1 << 30) -> str:
    """sha256 of the file's bytes (files over ``full_hash_limit``: of size + first and last 16 MiB)."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= full_hash_limit:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(f"size={size}".encode())
            h.update(f.read(16 << 20))
            f.seek(max(0, size - (16 << 20)))
            h.update(f.read())
    return h.hexdigest()


# ----------------------------------------------------------------------------- streaming JSON
class _JsonStream:
    """A growing window over a text file for decoding one JSON value at a time."""

    WS = " \t\r\n"
    DELIMS = " \t\r\n,]}:"

    def __init__(self, f, chunk_chars: int):
        self.f, self.chunk = f, chunk_chars
        self.buf, self.pos, self.eof = "", 0, False
        self.decoder = json.JSONDecoder()

    def fill(self) -> bool:
        if self.eof:
            return False
        more = self.f.read(self.chunk)
        if not more:
            self.eof = True
            return False
        self.buf = self.buf[self.pos:] + more
        self.pos = 0
        return True

    def peek(self) -> str:
        """The next non-whitespace character ('' at end of file), without consuming it."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in self.WS:
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.fill():
                return ""

    def expect(self, char: str, where: str) -> None:
        if self.peek() != char:
            raise ValueError(f"{where}: expected {char!r} near char {self.pos}")
        self.pos += 1

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError:
                if not self.fill():
                    raise
                continue
            # a number cut by the window's end ("2." of "2.5") decodes short: only accept a value that is
            # followed by a delimiter, or that ends the file
            if (end >= len(self.buf) or self.buf[end] not in self.DELIMS) and self.fill():
                continue
            self.pos = end
            return value


def _iter_json_container(path: Path, open_char: str, chunk_chars: int = 1 << 20) -> Iterator[Any]:
    """Yield the elements of a top-level JSON array (or the (key, value) pairs of an object) without loading
    the whole file: reads ``chunk_chars`` at a time and decodes one element at a time."""
    close = "]" if open_char == "[" else "}"
    with open(path, encoding="utf-8") as f:
        s = _JsonStream(f, chunk_chars)
        s.expect(open_char, str(path))
        first = True
        while True:
            c = s.peek()
            if c == "":
                raise ValueError(f"{path}: truncated JSON")
            if c == close:
                return
            if not first:
                s.expect(",", str(path))
            first = False
            if open_char == "{":
                key = s.value()
                s.expect(":", str(path))
                yield key, s.value()
            else:
                yield s.value()


def iter_json_array(path: str | os.PathLike) -> Iterator[Any]:
    """Elements of a (possibly huge) top-level JSON array, one at a time."""
    return _iter_json_container(Path(path), "[")


def iter_json_object(path: str | os.PathLike) -> Iterator[tuple[str, Any]]:
    """(key, value) pairs of a (possibly huge) top-level JSON object, one at a time."""
    return _iter_json_container(Path(path), "{")


# ----------------------------------------------------------------------------- products
@dataclass(slots=True)
class Product:
    asin: str
    title: str
    description: str
    bullets: list[str]
    pricing: list[float]
    price_tag: str
    options: dict[str, list[str]]
    attributes: list[str]
    category: str = ""
    query: str = ""
    product_category: str = ""
    reviews: list[dict] = field(default_factory=list)
    rating: str = "N.A."
    instruction: str | None = None  # items_ins_v2 synthetic instruction (None when the product has none)
    instruction_attributes: list[str] | None = None

    def to_json(self) -> dict:
        return {s: getattr(self, s) for s in self.__slots__}

    @classmethod
    def from_json(cls, d: dict) -> "Product":
        return cls(**d)


def parse_pricing(pricing: Any) -> tuple[list[float], str]:
    """(price floats, price tag) as WebShop's loader makes them."""
    values: list[float] = []
    if isinstance(pricing, (int, float)) and not isinstance(pricing, bool):
        values = [float(pricing)]
    elif isinstance(pricing, list):
        values = [float(p) for p in pricing if isinstance(p, (int, float))]
    elif isinstance(pricing, str) and pricing:
        for part in pricing.split("$")[1:]:
            digits = re.sub(r"[^\d.]", "", part)
            try:
                values.append(float(Decimal(digits)))
            except (InvalidOperation, ValueError):
                continue
    if not values:
        return [DEFAULT_PRICE], f"${DEFAULT_PRICE}"
    if len(values) == 1:
        return values, f"${values[0]}"
    return values[:2], f"${values[0]} to ${values[1]}"


def normalize_option_value(value: Any) -> str:
    return str(value).strip().replace("/", " | ").lower()


def normalize_product(raw: dict, attrs: dict | None) -> Product | None:
    """A :class:`Product` from a raw ``items_shuffle`` record and its ``items_ins_v2`` entry (None: skip it)."""
    asin = str(raw.get("asin", ""))
    if not asin or asin == "nan" or len(asin) > 10:
        return None
    pricing, price_tag = parse_pricing(raw.get("pricing"))
    options: dict[str, list[str]] = {}
    for name, contents in (raw.get("customization_options") or {}).items():
        if contents is None:
            continue
        values = []
        for content in contents:
            value = content.get("value") if isinstance(content, dict) else content
            if value is not None:
                values.append(normalize_option_value(value))
        options[str(name).lower()] = values
    small = raw.get("small_description")
    bullets = small if isinstance(small, list) else [small if small is not None else ""]
    attrs = attrs or {}
    attributes = attrs.get("attributes") if "attributes" in attrs else ["DUMMY_ATTR"]
    reviews = raw.get("reviews") if isinstance(raw.get("reviews"), list) else []
    return Product(
        asin=asin,
        title=str(raw.get("name") or ""),
        description=str(raw.get("full_description") or ""),
        bullets=[str(b) for b in bullets],
        pricing=pricing,
        price_tag=price_tag,
        options=options,
        attributes=list(attributes or []),
        category=str(raw.get("category") or ""),
        query=str(raw.get("query") or "").lower().strip(),
        product_category=str(raw.get("product_category") or ""),
        reviews=reviews,
        instruction=attrs.get("instruction") or None,
        instruction_attributes=attrs.get("instruction_attributes"),
    )


def search_document(p: Product) -> str:
    """The text WebShop indexes for a product: title, description, first bullet point and options, lower-cased."""
    option_text = ", and ".join(f"{name}: {', '.join(values)}" for name, values in p.options.items())
    first_bullet = p.bullets[0] if p.bullets else ""
    return " ".join([p.title, p.description, first_bullet, option_text]).lower()


def product_price(p: Product, seed: int = GOAL_SHUFFLE_SEED) -> float:
    """The fixed price a product is bought at (ranges: uniform draw seeded by the asin; see module docstring)."""
    if len(p.pricing) == 1:
        return float(p.pricing[0])
    lo, hi = p.pricing[:2]
    return random.Random(f"{seed}:{p.asin}").uniform(lo, hi)


# ----------------------------------------------------------------------------- goals
def _price_cap(price: float, rng: random.Random) -> tuple[float, str]:
    caps = [c for c in PRICE_RANGE if c > price][:4]
    if len(caps) >= 2:
        _, upper = sorted(rng.sample(caps, 2))
        return upper, f", and price lower than {upper:.2f} dollars"
    return NO_PRICE_CAP, ""


def synthetic_goals(product: Product, price: float, seed: int = GOAL_SHUFFLE_SEED) -> list[dict]:
    """WebShop's synthetic goals for one product: one per combination of its option values (option names in
    sorted order), when its ``items_ins_v2`` entry has an ``instruction``."""
    if not product.instruction:
        return []
    attributes = list(product.instruction_attributes or [])
    if not attributes:
        return []
    upper, price_text = _price_cap(price, random.Random(f"{seed}:{product.asin}"))
    names = sorted(product.options)
    goals = []
    for combo in itertools.product(*(product.options[n] for n in names)):
        goal_options = dict(zip(names, combo))
        option_text = ", and ".join(f"{k}: {v}" for k, v in goal_options.items())
        option_text = f" with {option_text}" if option_text else ""
        goals.append({
            "asin": product.asin,
            "category": product.category,
            "query": product.query,
            "name": product.title,
            "product_category": product.product_category,
            "instruction_text": f"{product.instruction}{option_text}{price_text}",
            "attributes": attributes,
            "price_upper": upper,
            "goal_options": goal_options,
        })
    return goals


def human_goals(product: Product, price: float, instructions: list[dict], seed: int = GOAL_SHUFFLE_SEED) -> list[dict]:
    """WebShop's human goals for one product from its ``items_human_ins.json`` entries (those with no
    ``instruction_attributes`` are skipped). ``goal_options`` is the list ``instruction_options``."""
    goals = []
    rng = random.Random(f"{seed}:{product.asin}")
    for ins in instructions or []:
        attributes = list(ins.get("instruction_attributes") or [])
        if not attributes:
            continue
        upper, price_text = _price_cap(price, rng)
        goals.append({
            "asin": product.asin,
            "category": product.category,
            "query": product.query,
            "name": product.title,
            "product_category": product.product_category,
            "instruction_text": str(ins.get("instruction", "")).strip(".") + price_text,
            "attributes": attributes,
            "price_upper": upper,
            "goal_options": list(ins.get("instruction_options") or []),
        })
    return goals


def shuffle_goals(goals: list[dict], seed: int = GOAL_SHUFFLE_SEED) -> list[dict]:
    goals = list(goals)
    random.Random(seed).shuffle(goals)
    return goals


# ----------------------------------------------------------------------------- the loaded data set
class _DiskProductStore:
    """Normalised products in a JSON-lines file (one product a line) read back by offset, with a small LRU."""

    def __init__(self, path: Path, offsets: list[int], cache_size: int = 4096):
        from functools import lru_cache

        self.path = path
        self.offsets = offsets
        self.end = path.stat().st_size
        self._fd = os.open(path, os.O_RDONLY)
        self.get = lru_cache(maxsize=cache_size)(self._read)

    def _read(self, i: int) -> Product:
        # pread: no shared file position, so forked workers can share the store
        end = self.offsets[i + 1] if i + 1 < len(self.offsets) else self.end
        line = os.pread(self._fd, end - self.offsets[i], self.offsets[i])
        return Product.from_json(json.loads(line))

    def __del__(self):
        try:
            os.close(self._fd)
        except (OSError, AttributeError):
            pass

    def __len__(self) -> int:
        return len(self.offsets)


class _MemoryProductStore:
    def __init__(self, products: list[Product]):
        self.products = products

    def get(self, i: int) -> Product:
        return self.products[i]

    def __len__(self) -> int:
        return len(self.products)


PREPARE_HINT = "python -m envs.webshop.index --data-dir {data_dir}"
_TEMP = re.compile(r"\.tmp(\d+)(?:\.[a-z]+)?$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_temps(cache_dir: Path) -> int:
    """Delete temp files (``*.tmp<pid>*``) that a killed build left in ``cache_dir`` (their pid is gone)."""
    removed = 0
    if not Path(cache_dir).is_dir():
        return 0
    for path in Path(cache_dir).iterdir():
        match = _TEMP.search(path.name)
        if match and path.is_file() and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            try:
                path.unlink()
                removed += 1
                logger.warning("webshop: removed %s, left by a build that was killed", path)
            except OSError:
                pass
    return removed


def _atomic_write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(value, f, ensure_ascii=False)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class WebShopData:
    """Products, prices, goals and the search index of one product set, loaded once per process.

    Use :meth:`load` (cached in-process by file fingerprints and options) rather than the constructor.
    Products files over ``lazy_threshold`` bytes (the full 1.18M set) are streamed once into an on-disk store
    (``<cache_dir>/<fingerprint>.products.jsonl``) and read back one product at a time, so memory holds only the
    asins, prices, goals and the index. The asins, prices and goals of such a set are kept beside the store
    (``...<goal key>.manifest.json``), so later loads read neither the products file nor the store.

    ``require_prepared=True`` refuses (:class:`WebShopDataError`, naming ``python -m envs.webshop.index``) instead
    of streaming a large products file that has no store or manifest yet. Temp files of a build that was killed
    are deleted on the next load; a build that fails deletes its own in ``finally``.
    """

    _CACHE: dict[tuple, "WebShopData"] = {}

    def __init__(self, products_path: Path, attrs_path: Path, goals: str = "synthetic",
                 human_goals_path: Path | None = None, num_products: int | None = None,
                 cache_dir: Path | None = None, lazy: bool | None = None, lazy_threshold: int = 256 << 20,
                 seed: int = GOAL_SHUFFLE_SEED, require_prepared: bool = False, progress: bool = False):
        from envs.webshop.search import default_cache_dir

        if goals not in ("synthetic", "human"):
            raise ValueError(f"goals must be 'synthetic' or 'human', got {goals!r}")
        self.products_path, self.attrs_path = Path(products_path), Path(attrs_path)
        self.goal_kind, self.num_products, self.seed = goals, num_products, seed
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        sweep_stale_temps(self.cache_dir)
        self.fingerprint = file_fingerprint(self.products_path)
        size = self.products_path.stat().st_size
        self.lazy = size > lazy_threshold if lazy is None else bool(lazy)
        if goals == "human" and (human_goals_path is None or not Path(human_goals_path).is_file()):
            raise WebShopDataError(f"human goals need {HUMAN_FILE} (looked for {human_goals_path}). {DATA_HELP}")
        goal_key = goals if goals == "synthetic" else f"human-{file_fingerprint(Path(human_goals_path))[:16]}"
        stem = f"{self.fingerprint[:32]}-n{num_products}-v{STORE_VERSION}"
        store_path = self.cache_dir / f"{stem}.products.jsonl"
        manifest_path = self.cache_dir / f"{stem}.{goal_key}-s{seed}.manifest.json"
        self.store_path = store_path if self.lazy else None
        self._index = None
        if self.lazy and store_path.is_file() and manifest_path.is_file():
            self._load_manifest(store_path, manifest_path)
            return
        if require_prepared and self.lazy:
            raise WebShopDataError(
                f"the WebShop product store for {self.products_path} is not built yet (a one-time step: it streams "
                f"the {size / 2**30:.1f} GiB file and builds the search index, ~10 min for 100k products and longer "
                f"for the full set). Run `{PREPARE_HINT.format(data_dir=self.products_path.parent)}` once before "
                "training (with the same --cache-dir / $SPA_RL_CACHE as the env workers)")
        self._parse(goals, human_goals_path, num_products, seed, store_path, manifest_path, progress)

    def _parse(self, goals, human_goals_path, num_products, seed, store_path: Path, manifest_path: Path,
               progress: bool = False) -> None:
        attrs = dict(iter_json_object(self.attrs_path))
        human = None
        if goals == "human":
            human = load_human_instructions(Path(human_goals_path))
            logger.info("webshop: human goals from %s", human_goals_path)

        self.asins: list[str] = []
        self.prices: list[float] = []
        self.index_of: dict[str, int] = {}
        raw_goals: list[dict] = []
        write_store = self.lazy and not store_path.exists()
        products: list[Product] = []
        offsets: list[int] = []
        out = None
        tmp_store = store_path.with_name(f"{store_path.name}.tmp{os.getpid()}")
        if write_store:
            store_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(tmp_store, "wb")
        try:
            pos = 0
            records = iter_json_array(self.products_path)
            if progress:
                from tqdm import tqdm

                records = tqdm(records, desc="webshop products", unit="product", total=num_products,
                               mininterval=1.0)
            for n, raw in enumerate(records):
                if num_products is not None and n >= num_products:
                    break
                if not isinstance(raw, dict):
                    continue
                asin = str(raw.get("asin", ""))
                if asin in self.index_of:
                    continue
                p = normalize_product(raw, attrs.get(asin))
                if p is None:
                    continue
                self.index_of[asin] = len(self.asins)
                self.asins.append(asin)
                price = product_price(p, seed)
                self.prices.append(price)
                if goals == "synthetic":
                    raw_goals.extend(synthetic_goals(p, price, seed))
                elif asin in human:
                    raw_goals.extend(human_goals(p, price, human[asin], seed))
                if not self.lazy:
                    products.append(p)
                elif out is not None:
                    line = (json.dumps(p.to_json(), ensure_ascii=False) + "\n").encode("utf-8")
                    offsets.append(pos)
                    out.write(line)
                    pos += len(line)
            if out is not None:
                out.close()
                out = None
                os.replace(tmp_store, store_path)
        finally:
            if out is not None:
                out.close()
            if tmp_store.exists():  # a failed (or interrupted) build leaves no partial store behind
                tmp_store.unlink()
        del attrs
        self.goals = shuffle_goals(raw_goals, seed)
        if self.lazy:
            if not offsets:  # the store came from the cache: rebuild the offsets from its lines
                offsets = self._offsets(store_path)
            if len(offsets) != len(self.asins):
                raise WebShopDataError(f"product store {store_path} is stale; delete it and retry")
            self.store = _DiskProductStore(store_path, offsets)
            _atomic_write_json(manifest_path, {"version": STORE_VERSION, "asins": self.asins, "prices": self.prices,
                                               "goals": self.goals})
        else:
            self.store = _MemoryProductStore(products)

    @staticmethod
    def _offsets(store_path: Path) -> list[int]:
        offsets, pos = [], 0
        with open(store_path, "rb") as f:
            for line in f:
                offsets.append(pos)
                pos += len(line)
        return offsets

    def _load_manifest(self, store_path: Path, manifest_path: Path) -> None:
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
        if not isinstance(manifest, dict) or manifest.get("version") != STORE_VERSION:
            raise WebShopDataError(f"{manifest_path} is not a version-{STORE_VERSION} manifest; delete it and rerun "
                                   f"`{PREPARE_HINT.format(data_dir=self.products_path.parent)}`")
        self.asins = [str(a) for a in manifest["asins"]]
        self.prices = [float(x) for x in manifest["prices"]]
        self.goals = list(manifest["goals"])
        self.index_of = {a: i for i, a in enumerate(self.asins)}
        offsets = self._offsets(store_path)
        if len(offsets) != len(self.asins) or len(self.prices) != len(self.asins):
            raise WebShopDataError(f"product store {store_path} and {manifest_path} disagree; delete both and rerun "
                                   f"`{PREPARE_HINT.format(data_dir=self.products_path.parent)}`")
        self.store = _DiskProductStore(store_path, offsets)

    @classmethod
    def load(cls, products_path: Path, attrs_path: Path, goals: str = "synthetic",
             human_goals_path: Path | None = None, num_products: int | None = None,
             cache_dir: Path | None = None, lazy: bool | None = None, seed: int = GOAL_SHUFFLE_SEED,
             require_prepared: bool = False, progress: bool = False) -> "WebShopData":
        def stamp(p):
            if p is None or not Path(p).exists():
                return None
            st = Path(p).stat()
            return (str(Path(p).resolve()), st.st_size, st.st_mtime_ns)

        key = (stamp(products_path), stamp(attrs_path), goals, stamp(human_goals_path) if goals == "human" else None,
               num_products, str(cache_dir), lazy, seed)
        data = cls._CACHE.get(key)
        if data is None:
            data = cls(products_path, attrs_path, goals, human_goals_path, num_products, cache_dir, lazy, seed=seed,
                       require_prepared=require_prepared, progress=progress)
            cls._CACHE[key] = data
        return data

    # ------------------------------------------------------------------ access
    def product(self, asin: str) -> Product:
        return self.store.get(self.index_of[asin])

    def price(self, asin: str) -> float:
        return self.prices[self.index_of[asin]]

    def documents(self) -> Iterator[tuple[str, str]]:
        for i, asin in enumerate(self.asins):
            yield asin, search_document(self.store.get(i))

    def index_key(self) -> str:
        from envs.webshop.search import index_cache_key

        return index_cache_key(self.fingerprint, f"n={self.num_products}|count={len(self.asins)}")

    def index_ready(self) -> bool:
        """The search index is in this process or in the disk cache (no build needed)."""
        from envs.webshop.search import _INDEX_CACHE

        return self._index is not None or self.index_key() in _INDEX_CACHE or \
            (self.cache_dir / f"{self.index_key()}.npz").is_file()

    @property
    def index(self):
        """The BM25 index over :meth:`documents` (built once; cached on disk and in-process)."""
        if self._index is None:
            from envs.webshop.search import get_or_build_index

            self._index = get_or_build_index(self.index_key(), self.documents, self.cache_dir)
        return self._index
