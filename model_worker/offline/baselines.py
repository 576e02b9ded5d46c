"""Simple baselines that score items from a user's history.

In:  training sequences (items 1..I, oldest first) to fit; histories to score.
Out: `scores(histories)` -> float array (B, I+1): a score per item for each history, column 0
     (no item) set to -inf. Full-catalogue ranking uses the whole row (sequential task); a
     candidate list uses `row[candidates]` (direct task).

- `Popularity`: training interaction counts.
- `Markov`: first-order item transitions counted on training sequences, scored from the last
  history item; ties and unseen last items back off to popularity.
- `NextId`: the largest item id in the history + 1, then the ids after it, then the ids below.
  It learns nothing; it measures how much the item numbering itself gives away (P5 numbers items
  in order of first appearance along the sequences, so the next item is often the next id).
SASRec lives in `sasrec.py` and follows the same interface.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class Scorer(Protocol):
    name: str

    def scores(self, histories: Sequence[Sequence[int]]) -> np.ndarray: ...


def item_counts(sequences: Sequence[Sequence[int]], n_items: int) -> np.ndarray:
    """(I+1,) interaction counts; entry 0 unused."""
    counts = np.zeros(n_items + 1, dtype=np.float64)
    for items in sequences:
        np.add.at(counts, np.asarray(items, dtype=np.int64), 1.0)
    return counts


class Popularity:
    """Every history gets the same scores: how often each item appears in training."""

    name = "popularity"

    def __init__(self, train: Sequence[Sequence[int]], n_items: int) -> None:
        self.counts = item_counts(train, n_items)
        self.counts[0] = -np.inf

    def scores(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        return np.tile(self.counts, (len(histories), 1))


class Markov:
    """score(j | last item i) = count(i -> j) * (max popularity + 1) + popularity(j): transitions
    first, popularity breaking ties and covering an unseen last item."""

    name = "markov"

    def __init__(self, train: Sequence[Sequence[int]], n_items: int) -> None:
        self.popularity = item_counts(train, n_items)
        self.scale = float(self.popularity.max()) + 1.0
        self.transitions: dict[int, dict[int, int]] = {}
        for items in train:
            for prev, nxt in zip(items[:-1], items[1:], strict=False):
                row = self.transitions.setdefault(int(prev), {})
                row[int(nxt)] = row.get(int(nxt), 0) + 1

    def scores(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        out = np.tile(self.popularity, (len(histories), 1))
        for b, history in enumerate(histories):
            row = self.transitions.get(int(history[-1]), {}) if len(history) else {}
            if row:
                nexts = np.fromiter(row.keys(), dtype=np.int64)
                out[b, nexts] += self.scale * np.fromiter(row.values(), dtype=np.float64)
        out[:, 0] = -np.inf
        return out


class NextId:
    """score(j) ranks ids m+1, m+2, ... first (m = largest id in the history), then m, m-1, ..."""

    name = "next_id"

    def __init__(self, train: Sequence[Sequence[int]], n_items: int) -> None:
        del train
        self.ids = np.arange(n_items + 1, dtype=np.float64)
        self.n_items = n_items

    def scores(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        largest = np.array([max(h) if len(h) else 0 for h in histories], dtype=np.float64)[:, None]  # (B, 1)
        above = -(self.ids[None, :] - largest - 1)  # 0 for m+1, -1 for m+2, ...
        below = -(self.n_items + largest - self.ids[None, :])  # after every id above m
        out = np.where(self.ids[None, :] > largest, above, below)
        out[:, 0] = -np.inf
        return out
