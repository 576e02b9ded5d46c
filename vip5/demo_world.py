"""The demo's world: a real product catalogue with photos, and simulated shoppers.

    load_catalogue()            -> [Product]  (vip5/demo_data: 240 photos, 12 article types)
    simulate_users(catalogue)   -> [Shopper]  each prefers one or two article types
    sessions(shopper, ...)      -> item ids the shopper touches, mostly of the preferred types

The photos and titles are real; the behaviour is simulated (the source has no real users), so a
recommendation can be judged by eye: does it match the types the user prefers?
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

from schemas.records import Interaction, ItemUpsert

DATA_DIR = Path(__file__).resolve().parent / "demo_data"
KINDS = ("view", "click", "click", "add_to_cart", "purchase")


@dataclass(frozen=True)
class Product:
    item_id: str
    title: str
    article_type: str
    image_path: Path

    def upsert(self, event_time_ms: int) -> ItemUpsert:
        return ItemUpsert(item_id=self.item_id, title=self.title, category=self.article_type,
                          image_bytes=self.image_path.read_bytes(), event_time_ms=event_time_ms)


@dataclass(frozen=True)
class Shopper:
    user_id: str
    likes: tuple[str, ...]  # preferred article types


def load_catalogue(data_dir: Path = DATA_DIR) -> list[Product]:
    with open(data_dir / "products.csv", newline="") as f:
        return [Product(item_id=f"p{row['product_id']}", title=row["title"], article_type=row["article_type"],
                        image_path=data_dir / row["image"]) for row in csv.DictReader(f)]


def simulate_users(catalogue: list[Product], n_users: int, *, seed: int) -> list[Shopper]:
    rng = random.Random(seed)
    types = sorted({p.article_type for p in catalogue})
    return [Shopper(user_id=f"shopper{n:03d}", likes=tuple(rng.sample(types, rng.choice((1, 2)))))
            for n in range(n_users)]


def next_item(shopper: Shopper, products: list[Product], rng: random.Random, *, focus: float = 0.85) -> Product:
    """A product the shopper touches next: one of the liked types with probability `focus`."""
    liked = [p for p in products if p.article_type in shopper.likes]
    return rng.choice(liked if liked and rng.random() < focus else products)


def session(shopper: Shopper, products: list[Product], length: int, rng: random.Random) -> list[Product]:
    return [next_item(shopper, products, rng) for _ in range(length)]


def interaction(shopper: Shopper, product: Product, n: int, event_time_ms: int, rng: random.Random) -> Interaction:
    return Interaction(event_id=f"demo-{shopper.user_id}-{n}", user_id=shopper.user_id, item_id=product.item_id,
                       kind=rng.choice(KINDS), event_time_ms=event_time_ms)
