"""``WebShopEnv``: WebShop (Yao et al. 2022) as a :class:`envs.base.TextEnv`, written from its published behaviour.

Episode: the agent starts on the search page with an instruction ("Find me ... with color: black, and price lower
than 40.00 dollars"), searches, browses results (10 per page, top 50 hits), opens products, selects options, and
ends the episode with ``click[Buy Now]``, which pays WebShop's reward in [0, 1] (see :mod:`envs.webshop.reward`).

Actions: ``search[<query>]`` (only on the search page) and ``click[<label>]`` for a clickable of the current page
(``Back to Search``, ``Next >``, ``< Prev``, a product's ASIN, an option value, ``Description``, ``Features``,
``Reviews`` when present, ``Buy Now``). The verb and the label are matched case-insensitively (and with
whitespace collapsed). Anything else is not executable: the observation is ``Invalid action! <why> [SEP] <the
current page>``, ``info['executable']`` is False and the state does not change.

Tasks: goal ids ``"0" .. "N-1"`` in WebShop's goal order (see :mod:`envs.webshop.products`). Splits follow
verl-agent/GiGPO: ``test`` = goals[0:500], ``train`` = goals[500:] (with ``val_size=k``: ``val`` =
goals[500:500+k] and ``train`` = goals[500+k:]); ``all`` = every goal.

Rewards: ``step`` returns the purchase reward on ``Buy Now`` and 0 otherwise; ``info['score']`` is that raw reward
and ``info['won']`` is ``reward == 1.0`` (GiGPO's success). Buy-now infos add ``reward_info`` (the breakdown),
``purchased_asin`` and ``purchased_options``. Every info has ``type_reward_approx`` (True when the type reward's
noun tagging uses the heuristic instead of spaCy ``en_core_web_sm``).

Anchor (GiGPO step grouping, compared within one task's group, so it leaves the instruction out): the page state,
not how the agent got there: ``search``; ``results|<sorted analysed query terms>|p<page>`` (two queries with the
same analysed terms show the same page); ``item|<asin>|<name=value;...>``; ``item:<tab>|<asin>|<options>`` for the
Description/Features/Reviews pages; ``done|<asin>|<options>``. The item anchors leave out the query that led there,
as the item page does not show it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from envs.base import TextEnv
from envs.webshop import pages
from envs.webshop.products import (
    GOAL_SHUFFLE_SEED,
    HUMAN_FILE,
    PREPARE_HINT,
    WebShopDataError,
    WebShopData,
    find_human_goals_file,
    find_product_files,
    resolve_data_dir,
)

SEARCH_RETURN_N = 50
PREPARE_MODES = ("auto", "require", "build")
INLINE_BUILD_BYTES = 256 << 20  # prepare="auto": larger products files must be prepared with envs.webshop.index
TEST_SIZE = 500
_ACTION_RE = re.compile(r"\s*(search|click)\s*\[(.*)\]\s*", re.IGNORECASE | re.DOTALL)


def _norm_label(label: str) -> str:
    return " ".join(label.split()).casefold()


@dataclass
class _State:
    page: str = "search"  # search | results | item | sub | done
    keywords: str = ""
    results: list[str] = field(default_factory=list)
    page_num: int = 1
    asin: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    tab: str | None = None


class WebShopEnv(TextEnv):
    """WebShop shopping tasks (see the module docstring).

    Args:
        data_dir: folder with the product files; default ``$SPA_DATA/webshop`` (:mod:`envs.paths`).
        max_steps: step limit (verl-agent uses 15).
        goals: ``"synthetic"`` (from ``items_ins_v2``; WebShop's and verl-agent's default) or ``"human"``
            (from ``items_human_ins.json``).
        human_goals_path: the human goals file; default ``<data_dir>/items_human_ins.json``, else
            ``<data_dir>/human_goals.json`` (see :func:`envs.webshop.products.find_human_goals_file`). The file
            used is ``env.goal_source`` and ``info["goal_source"]`` at reset (``"synthetic"`` for synthetic goals).
        num_products: load only the first N products of the file (WebShop's ``num_products``); None = all.
        product_set: ``"auto"`` (small set if present, else full), ``"small"`` or ``"full"``.
        val_size: goals carved out of train (right after the 500 test goals) as split ``val``.
        test_size: size of the test split (500, as verl-agent).
        cache_dir: where the search index (and the full set's product store) are cached;
            default ``$SPA_RL_CACHE/webshop`` or ``~/.cache/spa_rl/webshop``.
        spacy_model: spaCy model for the type reward's noun tagging; None forces the heuristic.
        lazy_products: keep products on disk (default: only when the products file is over 256 MiB).
        seed: seed of goal shuffling / price draws (233, WebShop's).
        faithful_option_reward: score options as WebShop does (see :mod:`envs.webshop.reward`; a few synthetic
            goals then cannot reach 1.0); False compares option values, so the exact purchase always scores 1.
        prepare: ``"auto"`` (default): a products file up to 256 MiB (the 1000-product set) has its search index
            built here if it is not cached yet; a larger one (the full 1.18M set) must have been prepared once
            with ``python -m envs.webshop.index`` (product store, manifest and index in ``cache_dir``), else the
            env refuses with that command. ``"require"`` refuses for any set that is not prepared; ``"build"``
            builds whatever is missing here. Either way the index is loaded (or built) in the constructor, never
            inside a step, so in the env pool it counts against ``reset_timeout``, not ``step_timeout``.
    """

    name = "webshop"
    step_info_extra = ("page", "available_actions", "type_reward_approx", "reward_info", "purchased_asin",
                       "purchased_options")

    def __init__(self, data_dir: str | Path | None = None, max_steps: int = 15, goals: str = "synthetic",
                 human_goals_path: str | Path | None = None, num_products: int | None = None,
                 product_set: str = "auto", val_size: int = 0, test_size: int = TEST_SIZE,
                 cache_dir: str | Path | None = None, spacy_model: str | None = "en_core_web_sm",
                 lazy_products: bool | None = None, seed: int = GOAL_SHUFFLE_SEED,
                 faithful_option_reward: bool = True, prepare: str = "auto"):
        super().__init__(max_steps=max_steps)
        if prepare not in PREPARE_MODES:
            raise ValueError(f"prepare must be one of {PREPARE_MODES}, got {prepare!r}")
        if goals not in ("synthetic", "human"):
            raise ValueError(f"goals must be 'synthetic' or 'human', got {goals!r}")
        root = resolve_data_dir(data_dir)
        products_path, attrs_path, self.product_set = find_product_files(root, product_set)
        if goals == "human" and human_goals_path is None:
            human_goals_path = find_human_goals_file(root) or root / HUMAN_FILE
        self.goal_source = Path(human_goals_path).name if goals == "human" else "synthetic"
        require = prepare == "require" or (prepare == "auto" and products_path.stat().st_size > INLINE_BUILD_BYTES)
        self.data = WebShopData.load(products_path, attrs_path, goals=goals, human_goals_path=human_goals_path,
                                     num_products=num_products, cache_dir=Path(cache_dir) if cache_dir else None,
                                     lazy=lazy_products, seed=seed, require_prepared=require)
        if require and not self.data.index_ready():
            raise WebShopDataError(
                f"the WebShop search index for {products_path} is not built (a one-time step; for the full set about "
                f"30 min). Run `{PREPARE_HINT.format(data_dir=root)}` once, with the same cache folder "
                f"({self.data.cache_dir}), before starting env workers")
        _ = self.data.index  # load (or build) now: never inside the first search step
        self.goal_kind = goals
        self.faithful_option_reward = bool(faithful_option_reward)
        self.val_size, self.test_size = int(val_size), int(test_size)
        if self.val_size < 0 or self.test_size < 0:
            raise ValueError("val_size and test_size must be >= 0")
        from envs.webshop.reward import NounExtractor, default_noun_extractor

        self.nouns = default_noun_extractor(spacy_model) if spacy_model else NounExtractor(None, approx=True)
        self._goal: dict | None = None
        self._state = _State()
        self._view: tuple[str, list[str]] = ("", [])

    # ------------------------------------------------------------------ tasks
    @property
    def index(self):
        return self.data.index

    @property
    def goals(self) -> list[dict]:
        return self.data.goals

    def list_tasks(self, split: str) -> list[str]:
        n = len(self.data.goals)
        test_end = min(self.test_size, n)
        val_end = min(test_end + self.val_size, n)
        ranges = {"test": (0, test_end), "val": (test_end, val_end), "train": (val_end, n), "all": (0, n)}
        if split not in ranges:
            raise ValueError(f"webshop: unknown split {split!r}; known: {', '.join(ranges)}")
        lo, hi = ranges[split]
        return [str(i) for i in range(lo, hi)]

    def task_type(self, task_id: str) -> str:
        try:
            return self.data.goals[int(task_id)].get("category") or self.name
        except (ValueError, IndexError):
            return self.name

    def goal(self, task_id: str | None = None) -> dict:
        """The goal dict of ``task_id`` (default: the current task)."""
        if task_id is None:
            if self._goal is None:
                raise RuntimeError("no current task: call reset() first")
            return self._goal
        return self.data.goals[self._goal_index(task_id)]

    def _goal_index(self, task_id: str) -> int:
        try:
            i = int(str(task_id))
        except ValueError:
            raise ValueError(f"webshop: task ids are goal indices '0'..'{len(self.data.goals) - 1}', "
                             f"got {task_id!r}") from None
        if not 0 <= i < len(self.data.goals):
            raise ValueError(f"webshop: goal {i} out of range (0..{len(self.data.goals) - 1})")
        return i

    # ------------------------------------------------------------------ episode
    def _reset(self, task_id: str, seed: int | None) -> tuple[str, dict]:
        self._goal = self.data.goals[self._goal_index(task_id)]
        self._state = _State()
        self._render()
        return self._view[0], self._info(executable=True, goal=self._goal["instruction_text"],
                                         goal_source=self.goal_source)

    def _step(self, action: str) -> tuple[str, float, bool, dict]:
        m = _ACTION_RE.fullmatch(action)
        if m is None:
            return self._invalid("use search[<query>] or click[<button>]")
        verb, arg = m.group(1).lower(), m.group(2).strip()
        if verb == "search":
            if self._state.page != "search":
                return self._invalid("there is no search bar on this page (click[Back to Search] first)")
            if not arg:
                return self._invalid("the search query is empty")
            return self._do_search(arg)
        label = self._match_clickable(arg)
        if label is None:
            return self._invalid(f"{arg!r} is not clickable on this page")
        return self._do_click(label)

    # ------------------------------------------------------------------ transitions
    def _do_search(self, query: str) -> tuple[str, float, bool, dict]:
        keywords = " ".join(query.lower().split())
        hits = self.data.index.search(keywords, k=SEARCH_RETURN_N)
        self._state = _State(page="results", keywords=keywords, results=[a for a, _ in hits], page_num=1)
        return self._moved()

    def _do_click(self, label: str) -> tuple[str, float, bool, dict]:
        s = self._state
        if label == pages.BACK_TO_SEARCH:
            self._state = _State()
        elif s.page == "results":
            if label == pages.NEXT_PAGE:
                self._state = replace(s, page_num=s.page_num + 1)
            elif label == pages.PREV_PAGE:
                self._state = replace(s, page_num=s.page_num - 1)
            else:  # a product asin
                self._state = replace(s, page="item", asin=label, options={}, tab=None)
        elif s.page == "item":
            if label == pages.PREV_PAGE:
                self._state = replace(s, page="results", asin=None, options={}, tab=None)
            elif label in pages.SUB_PAGES:
                self._state = replace(s, page="sub", tab=label)
            elif label == pages.BUY_NOW:
                return self._buy()
            else:  # an option value: like WebShop, the last option group holding that value gets it
                product = self.data.product(s.asin)
                group = [name for name, values in product.options.items() if label in values][-1]
                self._state = replace(s, options={**s.options, group: label})
        elif s.page == "sub":
            if label == pages.PREV_PAGE:
                self._state = replace(s, page="item", tab=None)
        return self._moved()

    def _buy(self) -> tuple[str, float, bool, dict]:
        from envs.webshop.reward import get_reward

        s = self._state
        product = self.data.product(s.asin)
        reward, breakdown = get_reward(product, self._goal, self.data.price(s.asin), s.options, self.nouns,
                                       self.faithful_option_reward)
        self._state = replace(s, page="done", tab=None)
        self._view = pages.done_page(product, s.options, reward)
        info = self._info(executable=True, won=reward == 1.0, score=reward, reward_info=breakdown,
                          purchased_asin=s.asin, purchased_options=dict(s.options))
        return self._view[0], reward, True, info

    # ------------------------------------------------------------------ helpers
    def _render(self) -> None:
        s, instr = self._state, self._goal["instruction_text"]
        if s.page == "search":
            self._view = pages.search_page(instr)
        elif s.page == "results":
            lo = (s.page_num - 1) * pages.RESULTS_PER_PAGE
            shown = [self.data.product(a) for a in s.results[lo:lo + pages.RESULTS_PER_PAGE]]
            self._view = pages.results_page(instr, shown, s.page_num, len(s.results))
        elif s.page == "item":
            self._view = pages.item_page(instr, self.data.product(s.asin), s.options)
        elif s.page == "sub":
            self._view = pages.sub_page(instr, self.data.product(s.asin), s.tab)

    def _match_clickable(self, arg: str) -> str | None:
        wanted = _norm_label(arg)
        for label in self._view[1]:
            if _norm_label(label) == wanted:
                return label
        return None

    def _moved(self) -> tuple[str, float, bool, dict]:
        self._render()
        return self._view[0], 0.0, False, self._info(executable=True)

    def _invalid(self, reason: str) -> tuple[str, float, bool, dict]:
        obs = f"Invalid action! {reason}.{pages.SEP}{self._view[0]}"
        return obs, 0.0, False, self._info(executable=False, error=reason)

    def _no_op(self, reason: str) -> tuple[str, dict]:
        obs, _, _, info = self._invalid(reason)
        return obs, info

    def _carry_info(self) -> dict:
        info = self._info(executable=False)
        for key in ("executable", "anchor", "won", "score"):  # the base class sets these
            info.pop(key)
        return info

    def anchor(self) -> str:
        s = self._state
        opts = ";".join(f"{k}={v}" for k, v in sorted(s.options.items()))
        if s.page == "search":
            return "search"
        if s.page == "results":
            from envs.webshop.search import analyze

            return f"results|{' '.join(sorted(analyze(s.keywords)))}|p{s.page_num}"
        if s.page == "item":
            return f"item|{s.asin}|{opts}"
        if s.page == "sub":
            return f"item:{(s.tab or '').lower()}|{s.asin}|{opts}"
        return f"done|{s.asin}|{opts}"

    def admissible_actions(self) -> list[str]:
        acts = ["search[<query>]"] if self._state.page == "search" else []
        return acts + [f"click[{c}]" for c in self._view[1]]

    def _info(self, executable: bool, **extra) -> dict:
        info = {
            "executable": executable,
            "anchor": self.anchor(),
            "won": False,
            "score": 0.0,
            "page": self._state.page,
            "admissible_actions": self.admissible_actions(),
            "available_actions": {"has_search_bar": self._state.page == "search", "clickables": list(self._view[1])},
            "type_reward_approx": self.nouns.approx,
        }
        info.update(extra)
        return info

    # ------------------------------------------------------------------ expert
    def expert_actions(self) -> list[str] | None:
        """A scripted shopper for the current goal, from the search page: search (the instruction, else the
        product title, else title + option values: whichever ranks the goal's product first), page to it, open
        it, select the goal's options, buy. If no query finds the product it buys the instruction's top hit."""
        if self._goal is None:
            return None
        goal = self._goal
        target = goal["asin"]
        product = self.data.product(target)
        option_values = self._goal_option_clicks(goal, product)
        queries = [goal["instruction_text"], product.title, " ".join([product.title, *option_values])]
        best = None
        for q in queries:
            q = " ".join(q.split())
            if not q:
                continue
            ranked = [a for a, _ in self.data.index.search(q.lower(), k=SEARCH_RETURN_N)]
            if target in ranked:
                rank = ranked.index(target)
                if best is None or rank < best[1]:
                    best = (q, rank)
                if rank < pages.RESULTS_PER_PAGE:
                    break
        if best is None:
            q = " ".join(goal["instruction_text"].split())
            ranked = [a for a, _ in self.data.index.search(q.lower(), k=SEARCH_RETURN_N)]
            if not ranked:
                return [f"search[{q}]"]
            return [f"search[{q}]", f"click[{ranked[0]}]", f"click[{pages.BUY_NOW}]"]
        q, rank = best
        actions = [f"search[{q}]"] + [f"click[{pages.NEXT_PAGE}]"] * (rank // pages.RESULTS_PER_PAGE)
        actions.append(f"click[{target}]")
        actions += [f"click[{v}]" for v in option_values]
        actions.append(f"click[{pages.BUY_NOW}]")
        return actions

    @staticmethod
    def _goal_option_clicks(goal: dict, product) -> list[str]:
        """The option values to click: a synthetic goal's values; for a human goal's free-text options, the
        product option value that matches each best (skipped when none is close)."""
        all_values = [v for values in product.options.values() for v in values]
        opts = goal["goal_options"]
        if isinstance(opts, dict):
            return [v for v in opts.values() if v in all_values]
        from thefuzz import fuzz

        clicks = []
        for want in opts:
            scored = [(fuzz.token_set_ratio(v, want), v) for v in all_values]
            if scored:
                score, value = max(scored, key=lambda t: t[0])
                if score > 50 and value not in clicks:
                    clicks.append(value)
        return clicks

    def close(self) -> None:
        self._goal = None
