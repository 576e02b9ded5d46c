"""Candidate generation for one user: co-visited items, the learned retriever's items, visual
neighbours, popular and fresh items.

In:  the user's history (item ids, oldest first), the `ItemIndex`, a `PopularityTracker` and a
     `FreshnessTracker` fed from the interactions and items streams, optionally a `Covisitation`
     fed from the interactions stream and a `SequentialRetriever` (index.retriever) fed from its
     compacted topics.
Out: up to `CandidateConfig.k` `RetrievedItem(item_id, score, source)` (the index-side view; the
     wire record built from it is `schemas.records.Candidate`), no duplicates, no seen items,
     grouped by source in `MERGE_ORDER` (co-visited, sequential, visual, popular, fresh), each group
     in its source's own order. Scores: co-visitation weight; the retriever's inner product; cosine
     to the query; decayed count; seconds since added, negated. They are comparable within a source only.
     With a retriever, every candidate also carries its `affinity`, the retriever's inner product
     (None for an item it has no vector for): comparable across all candidates of one user.

Slots: each source has `*_k` reserved slots and visual gets the rest of k; with a retriever, the
co-visited and retrieved items share their slots by a joint score (`fuse_behavioural`), and
content neighbours and fresh items are the cold ones only, the items the retriever has no vector
for (`CandidateConfig.content_cold_only`); the slots they cannot fill join the joint ranking. A
source that has fewer items than its slots leaves them to the others, in `MERGE_ORDER`, so a new
user (no history) still gets a full list of popular and fresh items, a log without images still
gets a full list of co-visited and popular ones, and a new product can reach users before anyone
clicks it. An item that two sources propose counts for the first in `MERGE_ORDER`.

The visual query is the recency-weighted mean of the history's unit vectors (weight 0.5 ** (age /
half_life), age 0 = latest item), normalised.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, TypeVar

import numpy as np

from index.covisitation import Covisitation
from index.item_index import ItemIndex
from schemas.records import CANDIDATE_SOURCES

if TYPE_CHECKING:  # the retriever imports torch; this module does not need it
    from index.retriever import SequentialRetriever

Item = TypeVar("Item", bound=Hashable)  # an item id: the live system's strings, offline's ints

# The sources this module merges, in list and backfill order; names are the wire's CANDIDATE_SOURCES.
MERGE_ORDER = ("covisit", "sequential", "visual", "popular", "fresh")
RESERVED = ("covisit", "sequential", "popular", "fresh")  # the sources with `<source>_k` slots; visual gets the rest
BEHAVIOURAL = ("covisit", "sequential")  # ranked jointly when there is a retriever (fuse_behavioural)
COLD_SOURCES = ("visual", "fresh")  # with a retriever, only for the items it does not know (content_cold_only)
assert set(MERGE_ORDER) <= set(CANDIDATE_SOURCES), set(MERGE_ORDER) - set(CANDIDATE_SOURCES)


@dataclass(frozen=True)
class CandidateConfig:
    """How many candidates, and from where: reserved slots per source, visual gets the rest."""

    k: int = 100  # candidates per request
    # Most slots go to the behavioural sources: on Amazon Beauty the top 100 holds the next item
    # for 0.19 of the users from co-visitation alone and 0.05 from popularity (`vip5 bench
    # candidates`), and about 0.3 from all sources with the learned retriever (`vip5 bench replay`).
    # Without a published retriever its slots go to co-visitation; visual (or text) neighbours keep
    # the 10 left, and a few fresh items keep new products in view. Popular items reserve no slots:
    # they fill whatever the others leave (a new user's whole list). On Beauty's validation users,
    # giving popularity's 5 reserved slots to the retriever raised recall@100 from 0.3355 to 0.3415.
    covisit_k: int = 20  # slots reserved for co-visited items
    sequential_k: int = 65  # slots reserved for the learned retriever's items (index.retriever)
    popular_k: int = 0  # slots reserved for popular items (they fill what the others leave anyway)
    fresh_k: int = 5  # slots reserved for freshly added items
    history_len: int = 20  # latest history items that shape the query
    # With a retriever, co-visited and retrieved items compete for the covisit_k + sequential_k slots
    # by affinity + covisit_fusion x ln(1 + co-visitation weight) (`fuse_behavioural`); None: each
    # source keeps its own slots. On Beauty's validation users, ranking the joint list by this score
    # gave recall@100 0.339 at weight 0, 0.344 at 1, 0.3445 at 2, 0.3365 at 4 (an offline check of
    # the ranking alone; the replay's numbers are in the README, "Replaying a log").
    covisit_fusion: float | None = 1.0
    # With a retriever, content (visual or text) neighbours and fresh items propose only the items
    # it has no vector for: products newer than the retriever, which no behavioural source can
    # rank. The retriever ranks the items it knows, their content included (index.sasrec's side
    # information), and the slots these sources leave go to the behavioural ones. On Beauty (text
    # vectors, every item known to the retriever) the behavioural sources then take all 100 slots:
    # replay recall@100 0.2996 against 0.2986 with content and fresh slots for any item, and 0.3016
    # against 0.2978 with two stacked retrievers (README, "Replaying a log"): even or slightly ahead
    # on warm items, and the slots stay open for the products that need them.
    content_cold_only: bool = True
    recency_half_life: float = 5.0  # in history positions: the item 5 back weighs half the latest

    @classmethod
    def sized(cls, k: int) -> CandidateConfig:
        """The default shares of each source's slots, scaled to k candidates (rounded down)."""
        base = cls()
        return cls(k=k, **{f"{s}_k": getattr(base, f"{s}_k") * k // base.k for s in RESERVED})

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"CandidateConfig.k must be >= 1, got {self.k}")
        for name in (f"{s}_k" for s in RESERVED):
            if not 0 <= getattr(self, name) <= self.k:
                raise ValueError(f"CandidateConfig.{name} must be in [0, k={self.k}], got {getattr(self, name)}")
        reserved = [getattr(self, f"{s}_k") for s in RESERVED]
        if sum(reserved) > self.k:
            raise ValueError(f"CandidateConfig.covisit_k + sequential_k + popular_k + fresh_k must be <= k={self.k}, "
                             f"got {' + '.join(map(str, reserved))}")
        if self.history_len < 1:
            raise ValueError(f"CandidateConfig.history_len must be >= 1, got {self.history_len}")
        if not self.recency_half_life > 0:
            raise ValueError(f"CandidateConfig.recency_half_life must be > 0, got {self.recency_half_life}")
        if self.covisit_fusion is not None and not (math.isfinite(self.covisit_fusion) and self.covisit_fusion >= 0):
            raise ValueError(f"CandidateConfig.covisit_fusion must be None or >= 0, got {self.covisit_fusion}")


class RetrievedItem(NamedTuple):
    item_id: str
    score: float
    source: str  # one of MERGE_ORDER
    affinity: float | None = None  # the learned retriever's score of the item for this user, any source


class PopularityTracker:
    """Exponentially decayed interaction counts: an event's weight halves every `half_life_s`.

    Scores are stored relative to a fixed origin (`2 ** ((t - origin) / half_life)`), so recording
    is O(1) and older items fall behind without touching them; rebased before the exponent grows big.
    Decay keeps the order of untouched items, so `top` serves from a ranked cache that is refreshed
    after `refresh_every` records (popularity may lag that many events).
    """

    def __init__(self, *, half_life_s: float = 3600.0, max_items: int = 100_000, refresh_every: int = 100):
        if half_life_s <= 0 or max_items < 1 or refresh_every < 1:
            raise ValueError("PopularityTracker needs half_life_s > 0, max_items >= 1 and refresh_every >= 1")
        self.half_life_s = half_life_s
        self.max_items = max_items
        self.refresh_every = refresh_every
        self._origin_s: float | None = None
        self._scores: dict[str, float] = {}
        self._ranked: list[tuple[str, float]] = []  # best first, cached
        self._stale_records = refresh_every  # records since the cache was built; starts stale

    def record(self, item_id: str, event_time_s: float, weight: float = 1.0) -> None:
        if self._origin_s is None:
            self._origin_s = event_time_s
        exponent = (event_time_s - self._origin_s) / self.half_life_s
        if exponent > 500:  # keep floats finite: move the origin to now
            self._rebase(event_time_s)
            exponent = 0.0
        self._scores[item_id] = self._scores.get(item_id, 0.0) + weight * 2.0**exponent
        if len(self._scores) > 2 * self.max_items:
            self._scores = dict(heapq.nlargest(self.max_items, self._scores.items(), key=lambda kv: kv[1]))
        self._stale_records += 1

    def top(self, n: int, *, now_s: float, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
        """The n most popular ids not in `exclude`, with their decayed counts as of `now_s`."""
        if self._origin_s is None or n <= 0:
            return []
        wanted = n + len(exclude)
        if self._stale_records >= self.refresh_every or len(self._scores) > len(self._ranked) < wanted:
            self._ranked = heapq.nlargest(max(wanted, 1000), self._scores.items(), key=lambda kv: kv[1])
            self._stale_records = 0
        scale = 2.0 ** ((self._origin_s - now_s) / self.half_life_s)
        out = []
        for item, score in self._ranked:
            if item not in exclude:
                out.append((item, score * scale))
                if len(out) == n:
                    break
        return out

    def _rebase(self, new_origin_s: float) -> None:
        factor = 2.0 ** ((self._origin_s - new_origin_s) / self.half_life_s)
        self._scores = {item: s * factor for item, s in self._scores.items() if s * factor > 1e-12}
        self._origin_s = new_origin_s
        self._stale_records = self.refresh_every


class FreshnessTracker:
    """The most recently added items, at most `max_items`, each with its add time.

    Kept in arrival order (an item added again moves to the end); `recent` walks back from the
    latest arrival and stops at the first one older than max_age_s.
    """

    def __init__(self, *, max_age_s: float = 7 * 86400.0, max_items: int = 10_000):
        if max_age_s <= 0 or max_items < 1:
            raise ValueError("FreshnessTracker needs max_age_s > 0 and max_items >= 1")
        self.max_age_s = max_age_s
        self.max_items = max_items
        self._added: OrderedDict[str, float] = OrderedDict()

    def add(self, item_id: str, added_time_s: float) -> None:
        self._added.pop(item_id, None)
        self._added[item_id] = added_time_s
        while len(self._added) > self.max_items:
            self._added.popitem(last=False)

    def discard(self, item_id: str) -> None:
        self._added.pop(item_id, None)

    def recent(self, n: int, *, now_s: float, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
        """Up to n newest ids added within max_age_s of `now_s`, score = -(age in seconds)."""
        out = []
        for item, added_s in reversed(self._added.items()):
            if len(out) >= n or now_s - added_s > self.max_age_s:
                break
            if item not in exclude:
                out.append((item, -(now_s - added_s)))
        return out


def history_query(history: Sequence[str], index: ItemIndex, config: CandidateConfig) -> np.ndarray | None:
    """(D,) unit query from the latest `history_len` items that have vectors; None if none do."""
    recent = list(history)[-config.history_len:]
    vectors = index.get_vectors(recent)
    rows, weights = [], []
    for age, item in enumerate(reversed(recent)):  # age 0 = latest
        if item in vectors:
            rows.append(vectors[item])
            weights.append(0.5 ** (age / config.recency_half_life))
    if not rows:
        return None
    query = np.asarray(weights, dtype=np.float32) @ np.stack(rows)  # (D,): the weighted mean, up to scale
    norm = float(np.linalg.norm(query))
    return query / norm if norm > 0 and math.isfinite(norm) else None


def slots(config: CandidateConfig) -> dict[str, int]:
    """Reserved slots per source: visual gets what the others leave of k."""
    reserved = {s: getattr(config, f"{s}_k") for s in RESERVED}
    return {"visual": config.k - sum(reserved.values()), **reserved}


def generate_candidates(history: Sequence[str], index: ItemIndex | Sequence[ItemIndex], popularity: PopularityTracker,
                        freshness: FreshnessTracker, config: CandidateConfig, *, now_s: float,
                        exclude: Collection[str] = (), covisitation: Covisitation | None = None,
                        retriever: SequentialRetriever | None = None) -> list[RetrievedItem]:
    """Up to k candidates for a user with `history`; never an item of the history or `exclude`.
    `index` may be several (image vectors, text vectors): the content neighbours come from all."""
    seen = set(history) | set(exclude)
    query = retriever.query_for(history) if retriever is not None else None
    ranked = {  # each source's own list, best first, up to k, none seen
        "covisit": covisitation.candidates(history, config.k, exclude=seen) if covisitation is not None else [],
        "sequential": query.top(config.k, exclude=seen) if query is not None else [],
        "visual": visual_neighbours(history, index, config, exclude=seen),
        "popular": popularity.top(config.k, now_s=now_s, exclude=seen),
        "fresh": freshness.recent(config.k, now_s=now_s, exclude=seen),
    }
    merged = merge_candidates(ranked, config, None if query is None else query.affinity)
    if query is None:
        return merged
    return [c._replace(affinity=a) for c, a in zip(merged, query.affinity([c.item_id for c in merged]), strict=True)]


def merge_candidates(ranked: Mapping[str, Sequence[tuple[Item, float]]], config: CandidateConfig,
                     affinity: Callable[[list[Item]], Sequence[float | None]] | None) -> list[RetrievedItem]:
    """Each source's list merged into k: by the configured slots, or, with the retriever's
    `affinity` and `covisit_fusion` set, the behavioural slots by `fuse_behavioural`. With
    `affinity` and `content_cold_only`, content neighbours and fresh items are only the ones the
    retriever has no vector for; the slots such a source cannot fill join the behavioural ones."""
    reserved = slots(config)
    if affinity is None:
        return merge_sources(ranked, reserved, config.k)
    ranked = dict(ranked)
    if config.content_cold_only:
        for source in COLD_SOURCES:
            ranked[source] = unknown_to(affinity, ranked.get(source, ()))
    if config.covisit_fusion is not None:
        spare = sum(max(0, n - len(ranked.get(s, ()))) for s, n in reserved.items() if s not in BEHAVIOURAL)
        ranked["covisit"], ranked["sequential"], fused = fuse_behavioural(
            ranked.get("covisit", ()), ranked.get("sequential", ()), affinity, config,
            joint_slots=min(config.k, config.covisit_k + config.sequential_k + spare))
        reserved.update(fused)
    return merge_sources(ranked, reserved, config.k)


def unknown_to(affinity: Callable[[list[Item]], Sequence[float | None]],
               items: Sequence[tuple[Item, float]]) -> list[tuple[Item, float]]:
    """The items of a source's list that the retriever has no vector for (no affinity), in order."""
    given = affinity([item for item, _ in items]) if items else []
    return [pair for pair, a in zip(items, given, strict=True) if a is None]


def fuse_behavioural(covisit: Sequence[tuple[Item, float]], sequential: Sequence[tuple[Item, float]],
                     affinity: Callable[[list[Item]], Sequence[float | None]], config: CandidateConfig,
                     *, joint_slots: int | None = None,
                     ) -> tuple[list[tuple[Item, float]], list[tuple[Item, float]], dict[str, int]]:
    """Co-visited items (weight > 0) and the retriever's items ranked together by
    affinity + covisit_fusion x ln(1 + co-visitation weight); an item the retriever has no vector
    for gets the lowest affinity of the others. Returns both lists in that order (each item under
    the first source that has it, with its own score) and the slots that give the top `joint_slots`
    (default covisit_k + sequential_k) of the joint order: {"covisit": n, "sequential": m}."""
    weight = {item: w for item, w in covisit if w > 0}
    own = dict(sequential)
    items = list(dict.fromkeys([*weight, *own]))
    if not items:
        return list(covisit), list(sequential), {}
    given = lowest_filled(affinity(items)) or (0.0,) * len(items)
    score = {item: a + config.covisit_fusion * math.log1p(weight.get(item, 0.0))
             for item, a in zip(items, given, strict=True)}
    order = sorted(items, key=lambda item: -score[item])  # stable: co-visitation's order breaks ties
    top = order[:config.covisit_k + config.sequential_k if joint_slots is None else joint_slots]
    fused_covisit = [(item, weight[item]) for item in order if item in weight]
    rest = [(item, w) for item, w in covisit if w <= 0 and item not in own]  # a generator's own fill
    n_covisit = sum(item in weight for item in top)
    return (fused_covisit + rest, [(item, own[item]) for item in order if item not in weight],
            {"covisit": n_covisit, "sequential": len(top) - n_covisit})


def lowest_filled(scores: Sequence[float | None]) -> tuple[float, ...] | None:
    """Retrieval scores with the missing ones at the lowest given (an item the retriever does not
    know ranks below every item it does); None when none is given."""
    given = [s for s in scores if s is not None]
    if not given:
        return None
    lowest = min(given)
    return tuple(lowest if s is None else s for s in scores)


def visual_neighbours(history: Sequence[str], index: ItemIndex | Sequence[ItemIndex], config: CandidateConfig, *,
                      exclude: Collection[str]) -> list[tuple[str, float]]:
    """Up to k nearest items to the history's query vector, per index (image vectors, text vectors:
    each queried with the history items it holds), merged by cosine; none when no history item
    has a vector. The source keeps its wire name "visual" for text neighbours too."""
    hits: dict[str, float] = {}
    for one in ([index] if isinstance(index, ItemIndex) else index):
        query = history_query(history, one, config)
        if query is None:
            continue
        for h in one.search_one(query, config.k, exclude=exclude):
            hits[h.item_id] = max(h.score, hits.get(h.item_id, -math.inf))
    return sorted(hits.items(), key=lambda kv: -kv[1])[: config.k]


def merge_sources(ranked: Mapping[str, Sequence[tuple[str, float]]], reserved: Mapping[str, int],
                  k: int) -> list[RetrievedItem]:
    """At most k distinct items: each source's reserved slots first, then what is left of k is filled
    from the sources in MERGE_ORDER; grouped by source in MERGE_ORDER, each in its own order."""
    picked: dict[str, list[tuple[str, float]]] = {source: [] for source in MERGE_ORDER}
    cursor = dict.fromkeys(MERGE_ORDER, 0)
    taken: set[str] = set()

    def take(source: str, n: int) -> None:
        items = ranked.get(source, ())
        while n > 0 and cursor[source] < len(items):
            item, score = items[cursor[source]]
            cursor[source] += 1
            if item not in taken:
                taken.add(item)
                picked[source].append((item, score))
                n -= 1

    for source in MERGE_ORDER:
        take(source, reserved.get(source, 0))
    for source in MERGE_ORDER:
        take(source, k - len(taken))
    return [RetrievedItem(item, score, source) for source in MERGE_ORDER for item, score in picked[source]]
