"""Candidate recall of the index-side sources on a replayed interaction log.

In:  a P5-layout folder (`sequential_data.txt`: "user item item ..." per line, oldest first).
Out: one dict: recall@20/50/100 per source (covisit, visual, popular, fresh) and for the merged
     list (`all`), plus the replay's size, speed and the co-visitation state's memory.

Replay: the training items of every user (all but the last two: validation and test) go through
the sources one interaction at a time, users interleaved by a seeded order that keeps each user's
own order, as the streams worker would see them. Then, for a seeded sample of users, the history is
all but the last item and a hit is the last item among a source's first K candidates.

Time: a P5 log has no timestamps, so event n happens at second n. Popularity then decays with a
half-life of `popularity_half_life_events` events; an item is "added" (freshness) when it is first
interacted with. Visual: a P5 log has no images, so the visual source is empty (recall 0) unless a
caller passes an `ItemIndex` with vectors.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from index.candidates import (
    CandidateConfig,
    FreshnessTracker,
    PopularityTracker,
    generate_candidates,
    visual_neighbours,
)
from index.covisitation import Covisitation, CovisitationConfig
from index.item_index import IndexConfig, ItemIndex

CUTOFFS = (20, 50, 100)


@dataclass(frozen=True)
class RecallBenchConfig:
    users: int = 5000  # test users sampled (all when the log has fewer)
    seed: int = 0  # interleaving of users and the test-user sample
    candidates: CandidateConfig = field(default_factory=CandidateConfig)
    covisitation: CovisitationConfig = field(default_factory=CovisitationConfig)
    popularity_half_life_events: float = 1e9  # effectively no decay: the log is not in real time order
    fresh_max_items: int = 10_000

    def __post_init__(self) -> None:
        if self.users < 1:
            raise ValueError(f"RecallBenchConfig.users must be >= 1, got {self.users}")
        if self.candidates.k < max(CUTOFFS):
            raise ValueError(f"RecallBenchConfig.candidates.k must be >= {max(CUTOFFS)}, got {self.candidates.k}")


def read_sequences(folder: Path) -> list[list[str]]:
    """Each user's item ids, oldest first, from `sequential_data.txt` (users with < 3 items dropped)."""
    path = Path(folder) / "sequential_data.txt"
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [row[1:] for row in rows if len(row) >= 4]


def interleaved(sequences: Sequence[Sequence[str]], rng: np.random.Generator) -> list[tuple[int, int]]:
    """(user, position) pairs over all sequences in a seeded order that keeps each user's own order."""
    turns = np.repeat(np.arange(len(sequences)), [len(s) for s in sequences])
    rng.shuffle(turns)
    next_pos = [0] * len(sequences)
    order = []
    for user in turns.tolist():
        order.append((user, next_pos[user]))
        next_pos[user] += 1
    return order


class Sources:
    """The streams worker's candidate state, fed one interaction at a time."""

    def __init__(self, config: RecallBenchConfig, index: ItemIndex | None = None):
        self.config = config
        self.covisitation = Covisitation(config.covisitation)
        self.popularity = PopularityTracker(half_life_s=config.popularity_half_life_events)
        self.freshness = FreshnessTracker(max_age_s=float("inf"), max_items=config.fresh_max_items)
        self.index = index if index is not None else ItemIndex(IndexConfig(dim=8, kind="flat", use_gpu=False))
        self.now_s = 0.0
        self._known: set[str] = set()

    def record(self, before: Sequence[str], item: str) -> None:
        self.now_s += 1.0
        self.covisitation.record(before, item)
        self.popularity.record(item, self.now_s)
        if item not in self._known:  # first interaction stands in for the item's arrival
            self._known.add(item)
            self.freshness.add(item, self.now_s)

    def ranked(self, history: Sequence[str]) -> dict[str, list[str]]:
        """Each source's own list of up to k ids, best first, and the merged list (`all`)."""
        config, seen = self.config.candidates, set(history)
        lists = {
            "covisit": self.covisitation.candidates(history, config.k),
            "visual": visual_neighbours(history, self.index, config, exclude=seen),
            "popular": self.popularity.top(config.k, now_s=self.now_s, exclude=seen),
            "fresh": self.freshness.recent(config.k, now_s=self.now_s, exclude=seen),
        }
        merged = generate_candidates(history, self.index, self.popularity, self.freshness, config,
                                     now_s=self.now_s, covisitation=self.covisitation)
        return {**{name: [i for i, _ in items] for name, items in lists.items()},
                "all": [c.item_id for c in merged]}


def candidate_recall(sequences: Sequence[Sequence[str]], config: RecallBenchConfig, *,
                     index: ItemIndex | None = None) -> dict:
    """Replay the training part of `sequences`, then measure recall on a seeded sample of users."""
    rng = np.random.default_rng(config.seed)
    train = [seq[:-2] for seq in sequences]
    sources = Sources(config, index)
    started = time.perf_counter()
    for user, pos in interleaved(train, rng):
        sources.record(train[user][:pos], train[user][pos])
    replay_s = time.perf_counter() - started
    users = rng.choice(len(sequences), size=min(config.users, len(sequences)), replace=False)
    hits: dict[str, np.ndarray] = {}
    started = time.perf_counter()
    for row, user in enumerate(users.tolist()):
        *history, target = sequences[user]
        for name, items in sources.ranked(history).items():
            hits.setdefault(name, np.zeros((len(users), len(CUTOFFS)), dtype=bool))
            hits[name][row] = [target in items[:cutoff] for cutoff in CUTOFFS]
    query_s = time.perf_counter() - started
    return {
        "recall": {name: {f"recall@{c}": round(float(h[:, j].mean()), 4) for j, c in enumerate(CUTOFFS)}
                   for name, h in hits.items()},
        "users": len(users),
        "events": int(sources.now_s),
        "seed": config.seed,
        "replay_events_per_s": round(sources.now_s / max(replay_s, 1e-9)),
        "candidates_ms_per_user": round(1000 * query_s / len(users), 3),
        "covisit": {**sources.covisitation.stats(), "bytes": sources.covisitation.memory_bytes()},
        "slots": {"k": config.candidates.k, "covisit_k": config.candidates.covisit_k,
                  "popular_k": config.candidates.popular_k, "fresh_k": config.candidates.fresh_k},
    }
