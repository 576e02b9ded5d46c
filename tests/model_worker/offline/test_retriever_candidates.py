"""Offline re-rank candidates with the learned retriever merge like the live streams worker's."""

import numpy as np
import pytest

from index.retriever import save_retriever
from index.sasrec import SASRecConfig, SASRecScorer
from model_worker.offline.candidates import CoVisitCandidates, RetrieverCandidates

N_ITEMS = 30


def test_the_behavioural_slots_go_to_the_best_by_affinity_and_co_visitation_in_data_numbering(tmp_path):
    rng = np.random.default_rng(0)
    train = [list(range(s, s + 6)) for s in rng.integers(1, N_ITEMS - 6, size=200)]
    scorer = SASRecScorer(train, N_ITEMS, SASRecConfig(hidden=16, max_len=8, max_epochs=5, time_budget_s=30))
    data_keys = [f"i{j}" for j in range(1, N_ITEMS + 1)]
    save_retriever(scorer.model, data_keys, tmp_path)
    covisit = CoVisitCandidates(train, N_ITEMS)
    generator = RetrieverCandidates(covisit, str(tmp_path), data_keys)
    history = [3, 4, 5]
    items, _ = generator.candidates(history, 10)
    co_items, co_scores = covisit.candidates(history, 10)
    weight = {i: w for i, w in zip(co_items, co_scores, strict=True) if w > 0}
    retrieved = [i for i, _ in generator.retrieved(history, 10)]
    affinity = scorer.scores([history])[0]
    joint = sorted(dict.fromkeys([*weight, *retrieved]), key=lambda i: -(affinity[i] + np.log1p(weight.get(i, 0.0))))
    # CandidateConfig's shares scaled to 10: 2 + 6 behavioural slots go to the joint order's best 8,
    # the rest is filled from co-visitation; listed by source, co-visited first, each in joint order
    assert set(joint[:8]) <= set(items)
    co_visited = [i for i in joint if i in items and i in weight]
    sequential = [i for i in joint if i in items and i not in weight]
    filled = [i for i in items if i not in joint]  # co-visitation's popularity fill
    assert items == co_visited + filled + sequential
    assert len(set(items)) == 10 and not set(items) & set(history)
    expected = scorer.scores([history])[0]
    assert generator.affinity(history, items) == pytest.approx(expected[items].tolist(), rel=1e-5)
    expected[history] = -np.inf
    assert retrieved == [int(i) for i in np.argsort(-expected, kind="stable")[:10]]
    # a retriever trained with another numbering maps back to this data's items by key
    shuffled = list(reversed(data_keys))
    other = RetrieverCandidates(covisit, str(tmp_path), shuffled)
    assert [shuffled[i - 1] for i, _ in other.retrieved([N_ITEMS + 1 - h for h in history], 10)] == \
        [data_keys[i - 1] for i in retrieved]
