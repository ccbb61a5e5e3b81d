"""A tiny hand-made WebShop data set (for tests, examples and demos without the real files).

``write_tiny_dataset(folder)`` writes ``items_shuffle_1000.json`` and ``items_ins_v2_1000.json`` (and, with
``human=True``, ``items_human_ins.json``) in WebShop's raw formats:

* ``B0SHOE0001`` "Red Running Shoes for Men", $30.0, options Color (Red, Navy Blue) x Size (9, 10), with a
  synthetic instruction -> 4 synthetic goals;
* ``B0MUG00002`` "Ceramic Coffee Mug", priced "$12.5 - $15.0", no options, with an instruction -> 1 goal;
* ``B0TRAIL003`` "Trail Running Shoes Women", $45.0, options Color (Black, White), no instruction;
* ``n_fillers`` filler products "Generic Running Shoe Model k" (no ``items_ins_v2`` entry) so that a search for
  running shoes has several result pages.
"""

from __future__ import annotations

import json
from pathlib import Path

SHOE, MUG, TRAIL = "B0SHOE0001", "B0MUG00002", "B0TRAIL003"


def tiny_products(n_fillers: int = 25) -> list[dict]:
    products = [
        {
            "asin": SHOE, "name": "Red Running Shoes for Men",
            "full_description": "Lightweight running shoes with a rubber sole.",
            "small_description": ["Rubber sole", "Breathable mesh upper"], "pricing": "$30.0",
            "customization_options": {"Color": [{"value": "Red", "image": None}, {"value": "Navy Blue", "image": None}],
                                      "Size": [{"value": "9"}, {"value": "10"}]},
            "product_category": "Clothing, Shoes & Jewelry › Men › Shoes › Athletic › Running",
            "category": "fashion", "query": "Men's Running Shoes ", "images": ["img1"], "average_rating": 4.5,
        },
        {
            "asin": MUG, "name": "Ceramic Coffee Mug", "full_description": "A mug for coffee and tea.",
            "small_description": "Dishwasher safe", "pricing": "$12.5 - $15.0", "customization_options": "",
            "product_category": "Home & Kitchen › Kitchen & Dining › Dining & Entertaining › Cups, Mugs & Saucers",
            "category": "garden", "query": "coffee mugs", "images": ["img2"], "average_rating": "",
        },
        {
            "asin": TRAIL, "name": "Trail Running Shoes Women", "full_description": "Durable trail shoes.",
            "small_description": ["Rubber outsole"], "pricing": "$45.0",
            "customization_options": {"Color": [{"value": "Black"}, {"value": "White"}], "Style": None},
            "product_category": "Clothing, Shoes & Jewelry › Women › Shoes › Athletic › Running",
            "category": "fashion", "query": "women's running shoes", "images": ["img3"], "average_rating": 4.0,
        },
    ]
    for k in range(n_fillers):
        products.append({
            "asin": f"B0FILL{k:04d}", "name": f"Generic Running Shoe Model {k}",
            "full_description": "A running shoe.", "small_description": [f"Model {k}"], "pricing": f"${20 + k}.0",
            "customization_options": "", "product_category": "Clothing, Shoes & Jewelry › Shoes",
            "category": "fashion", "query": "running shoes", "images": [], "average_rating": "",
        })
    return products


def tiny_attributes() -> dict:
    return {
        SHOE: {"attributes": ["rubber sole", "lightweight"],
               "instruction": "Find me lightweight men's running shoes with rubber sole",
               "instruction_attributes": ["rubber sole", "lightweight"]},
        MUG: {"attributes": ["dishwasher safe"], "instruction": "Find me a dishwasher safe coffee mug",
              "instruction_attributes": ["dishwasher safe"]},
        TRAIL: {"attributes": ["rubber sole"]},
    }


def tiny_human_instructions() -> dict:
    return {
        SHOE: [
            {"instruction": "i want navy blue running shoes in size 10 for men.", "attributes": ["rubber sole"],
             "instruction_attributes": ["rubber sole"], "instruction_options": ["navy blue", "10"],
             "options": ["navy blue", "10"]},
            {"instruction": "no attributes here", "attributes": [], "instruction_attributes": [],
             "instruction_options": []},
        ],
        MUG: [
            {"instruction": "I need a coffee mug that is dishwasher safe", "attributes": ["dishwasher safe"],
             "instruction_attributes": ["dishwasher safe"], "instruction_options": []},
        ],
    }


def write_tiny_dataset(folder: str | Path, n_fillers: int = 25, human: bool = False,
                       names: tuple[str, str] = ("items_shuffle_1000.json", "items_ins_v2_1000.json")) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / names[0]).write_text(json.dumps(tiny_products(n_fillers), ensure_ascii=False), encoding="utf-8")
    (folder / names[1]).write_text(json.dumps(tiny_attributes(), ensure_ascii=False), encoding="utf-8")
    if human:
        (folder / "items_human_ins.json").write_text(json.dumps(tiny_human_instructions()), encoding="utf-8")
    return folder
