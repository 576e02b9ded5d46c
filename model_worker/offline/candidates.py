"""A cheap candidate generator for offline re-ranking: co-visitation of the recent items, then
popularity.

In:  training sequences (items 1..I, oldest first); histories.
Out: `candidates(history, k)` -> up to k distinct items not in the history, best first, with scores
     (co-visitation weight; popularity-filled slots score below every co-visited item).

Co-visitation: for every pair of items at most `window` positions apart in a training sequence,
weight 1 / distance, both directions. A history's score for item j sums, over its last `recent`
items h (the newest weighted 1, the one before 1/2, ...), the weight of (h, j). Each item keeps
its `neighbours` heaviest co-visited items, so memory is I x neighbours.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CoVisitConfig:
    window: int = 3
    recent: int = 5
    neighbours: int = 200

    def __post_init__(self) -> None:
        if min(self.window, self.recent, self.neighbours) < 1:
            raise ValueError("CoVisitConfig.window, recent and neighbours must be >= 1")


class CoVisitCandidates:
    name = "covisit"

    def __init__(self, train: Sequence[Sequence[int]], n_items: int, config: CoVisitConfig | None = None):
        self.config = config or CoVisitConfig()
        self.n_items = n_items
        weights: dict[int, Counter] = defaultdict(Counter)
        popularity = np.zeros(n_items + 1)
        for items in train:
            for pos, item in enumerate(items):
                popularity[item] += 1
                for gap in range(1, self.config.window + 1):
                    if pos + gap < len(items) and items[pos + gap] != item:
                        weights[item][items[pos + gap]] += 1.0 / gap
                        weights[items[pos + gap]][item] += 1.0 / gap
        self.neighbours = {i: c.most_common(self.config.neighbours) for i, c in weights.items()}
        self.popular = [int(i) for i in np.argsort(-popularity[1:], kind="stable") + 1]

    def candidates(self, history: Sequence[int], k: int) -> tuple[list[int], list[float]]:
        scores: Counter = Counter()
        for age, item in enumerate(reversed(history[-self.config.recent:])):
            for other, weight in self.neighbours.get(item, ()):
                scores[other] += weight / (age + 1)
        seen = set(history)
        ranked = [(i, s) for i, s in scores.most_common() if i not in seen][:k]
        chosen = {i for i, _ in ranked}
        for rank, item in enumerate(self.popular):
            if len(ranked) >= k:
                break
            if item not in seen and item not in chosen:
                ranked.append((item, -1.0 - rank / len(self.popular)))
        return [i for i, _ in ranked], [s for _, s in ranked]
