"""Text rendering of WebShop's pages.

The layout follows WebShop's ``text`` observation mode: the visible strings of the page joined by ``" [SEP] "``.
Each renderer returns the observation text and the page's clickables (the labels ``click[...]`` accepts), in the
order they appear. Differences from WebShop (deliberate): the item page shows the selected options
(``Selected options: size: large; color: black``); ``Next >`` is shown only when a next page has results; the
``Reviews`` button is shown only for products whose data has reviews (the released data has none).
"""

from __future__ import annotations

SEP = " [SEP] "
BACK_TO_SEARCH = "Back to Search"
NEXT_PAGE = "Next >"
PREV_PAGE = "< Prev"
BUY_NOW = "Buy Now"
DESCRIPTION = "Description"
FEATURES = "Features"
REVIEWS = "Reviews"
SUB_PAGES = (DESCRIPTION, FEATURES, REVIEWS)
RESULTS_PER_PAGE = 10


def _instruction(instruction: str) -> list[str]:
    return ["Instruction:", instruction]


def search_page(instruction: str) -> tuple[str, list[str]]:
    return SEP.join(["WebShop", *_instruction(instruction), "Search"]), []


def results_page(instruction: str, products: list, page: int, total: int) -> tuple[str, list[str]]:
    """``products``: the :class:`~envs.webshop.products.Product` objects shown on this page."""
    clickables = [BACK_TO_SEARCH]
    parts = [*_instruction(instruction), BACK_TO_SEARCH, f"Page {page} (Total results: {total})"]
    if page > 1:
        parts.append(PREV_PAGE)
        clickables.append(PREV_PAGE)
    if page * RESULTS_PER_PAGE < total:
        parts.append(NEXT_PAGE)
        clickables.append(NEXT_PAGE)
    for p in products:
        parts += [p.asin, p.title, p.price_tag]
        clickables.append(p.asin)
    return SEP.join(parts), clickables


def item_page(instruction: str, product, selected: dict[str, str]) -> tuple[str, list[str]]:
    clickables = [BACK_TO_SEARCH, PREV_PAGE]
    parts = [*_instruction(instruction), BACK_TO_SEARCH, PREV_PAGE]
    for name, values in product.options.items():
        parts.append(name)
        parts.extend(values)
        clickables.extend(values)
    if selected:
        parts.append("Selected options: " + "; ".join(f"{k}: {v}" for k, v in selected.items()))
    parts += [product.title, f"Price: {product.price_tag}", f"Rating: {product.rating}", DESCRIPTION, FEATURES]
    clickables += [DESCRIPTION, FEATURES]
    if product.reviews:
        parts.append(REVIEWS)
        clickables.append(REVIEWS)
    parts.append(BUY_NOW)
    clickables.append(BUY_NOW)
    return SEP.join(parts), clickables


def sub_page(instruction: str, product, tab: str) -> tuple[str, list[str]]:
    parts = [*_instruction(instruction), BACK_TO_SEARCH, PREV_PAGE]
    if tab == DESCRIPTION:
        parts.append(product.description or "(no description)")
    elif tab == FEATURES:
        parts.extend([b for b in product.bullets if b] or ["(no features)"])
    else:
        for r in product.reviews:
            if not isinstance(r, dict):
                continue
            title = r.get("title", "")
            score = r.get("score", r.get("stars", ""))
            body = r.get("body", r.get("review", ""))
            parts += [f'"{title}"', str(score), str(body)]
        if len(parts) == 4:
            parts.append("(no reviews)")
    return SEP.join(parts), [BACK_TO_SEARCH, PREV_PAGE]


def done_page(product, selected: dict[str, str], reward: float) -> tuple[str, list[str]]:
    opts = "; ".join(f"{k}: {v}" for k, v in selected.items()) or "none"
    parts = ["Thank you for shopping with us!", f"Purchased: {product.asin}", product.title,
             f"Options: {opts}", "Your score (min 0.0, max 1.0)", f"{reward:.4f}"]
    return SEP.join(parts), []
