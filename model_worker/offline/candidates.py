"""Candidate generators for offline re-ranking: co-visitation of the recent items, then popularity;
optionally merged with the learned retriever's items as the live streams worker merges them
(`index.candidates.merge_candidates`: the behavioural slots ranked by affinity and co-visitation).

In:  training sequences (items 1..I, oldest first); histories; optionally a `vip5 retriever train` folder.
Out: `candidates(history, k)` -> up to k distinct items not in the history, best first, with scores
     (co-visitation weight; popularity-filled slots score below every co-visited item; the
     retriever's items score 0, so fusion adds nothing for them); with the retriever,
     `affinity(history, items)` -> its score of each candidate, as the live `Candidate.affinity`.

Co-visitation: for every pair of items at most `window` positions apart in a training sequence,
weight 1 / distance from the earlier item to the later, `backward_weight` / distance back. A
history's score for item j sums, over its last `recent` items h (the newest weighted 1, the one
before 1/2, ...), the weight of (h, j). Each item keeps its `neighbours` heaviest co-visited
items, so memory is I x neighbours.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from index.candidates import CandidateConfig, lowest_filled, merge_candidates
from index.retriever import load_retriever
from index.sasrec import left_pad


@dataclass(frozen=True)
class CoVisitConfig:
    window: int = 3
    recent: int = 5
    neighbours: int = 200
    backward_weight: float = 0.5  # as index.covisitation.CovisitationConfig

    def __post_init__(self) -> None:
        if min(self.window, self.recent, self.neighbours) < 1:
            raise ValueError("CoVisitConfig.window, recent and neighbours must be >= 1")
        if not 0.0 <= self.backward_weight <= 1.0:
            raise ValueError(f"CoVisitConfig.backward_weight must be in [0, 1], got {self.backward_weight}")


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
                        weights[items[pos + gap]][item] += self.config.backward_weight / gap
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


class RetrieverCandidates:
    """Co-visitation's list merged with the learned retriever's (`index.retriever`) by the live
    merge (`index.candidates.merge_candidates` with the default `CandidateConfig`; the other
    live sources, content and fresh items, have no offline counterpart here). The retriever's items
    are mapped to this data's numbering by item key."""

    name = "covisit+sequential"

    def __init__(self, covisit: CoVisitCandidates, retriever_dir: str, item_keys: Sequence[str]):
        self.covisit = covisit
        self.version, self.model, keys = load_retriever(retriever_dir)
        ours = {key: item for item, key in enumerate(item_keys, start=1)}
        self.to_ours = np.array([0] + [ours.get(key, 0) for key in keys])  # retriever item -> ours (0: unknown)
        theirs = {key: item for item, key in enumerate(keys, start=1)}
        self.to_theirs = np.array([0] + [theirs.get(key, 0) for key in item_keys])
        with torch.no_grad():
            self.table = self.model.item_table()  # (I'+1, D), fixed: the model is in eval mode
        self._last: tuple[tuple[int, ...], np.ndarray | None] | None = None  # the latest history's scores

    @torch.no_grad()
    def item_scores(self, history: Sequence[int]) -> np.ndarray | None:
        """The retriever's inner product of every item with the history's query, in its own
        numbering (I'+1,), column 0 = -inf; None when no history item is known to it. The latest
        history's scores are kept: candidates and then affinity for one user run the network once."""
        key = tuple(history)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        mapped = [int(self.to_theirs[i]) for i in history if self.to_theirs[i]]
        scores = None
        if mapped:
            seq = torch.tensor([left_pad(mapped, self.model.config.max_len)])
            scores = (self.model(seq, self.table)[0, -1] @ self.table.T).numpy()  # (I'+1,)
            scores[0] = -np.inf
        self._last = (key, scores)
        return scores

    def affinity(self, history: Sequence[int], items: Sequence[int]) -> list[float]:
        """Each item's inner product with the history's query, as the streams worker attaches it to
        every candidate (`Candidate.affinity`); items unknown to the retriever get the lowest, as
        the model worker fills them (`index.candidates.lowest_filled`); all 0 without a query."""
        filled = lowest_filled(self.known(self.item_scores(history), items))
        return [0.0] * len(items) if filled is None else list(filled)

    def known(self, scores: np.ndarray | None, items: Sequence[int]) -> list[float | None]:
        """`item_scores`' score of each of our items; None where the retriever does not know it."""
        return [None if scores is None or not self.to_theirs[i] else float(scores[self.to_theirs[i]]) for i in items]

    def retrieved(self, history: Sequence[int], k: int, scores: np.ndarray | None = None) -> list[tuple[int, float]]:
        """The retriever's top k of our items outside the history (`scores`: `item_scores(history)`)."""
        scores = self.item_scores(history) if scores is None else scores
        if scores is None:
            return []
        seen, out = set(history), []
        for item in np.argsort(-scores, kind="stable"):
            ours = int(self.to_ours[item])
            if ours and ours not in seen:
                out.append((ours, 0.0))
                if len(out) == k:
                    break
        return out

    def candidates(self, history: Sequence[int], k: int) -> tuple[list[int], list[float]]:
        items, covisit_scores = self.covisit.candidates(history, k)
        scores = self.item_scores(history)
        ranked = {"covisit": list(zip(items, covisit_scores, strict=True)),
                  "sequential": self.retrieved(history, k, scores)}
        affinity = None if scores is None else (lambda chosen: self.known(scores, chosen))
        merged = merge_candidates(ranked, CandidateConfig.sized(k), affinity)
        return [int(c.item_id) for c in merged], [c.score for c in merged]
