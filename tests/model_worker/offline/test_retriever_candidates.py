"""Offline re-rank candidates with the learned retriever merge like the live streams worker's."""

import numpy as np
import pytest

from index.retriever import save_retriever
from index.sasrec import SASRecConfig, SASRecScorer
from model_worker.offline.candidates import CoVisitCandidates, RetrieverCandidates

N_ITEMS = 30


def test_co_visited_slots_come_first_then_the_retrievers_best_in_data_numbering(tmp_path):
    rng = np.random.default_rng(0)
    train = [list(range(s, s + 6)) for s in rng.integers(1, N_ITEMS - 6, size=200)]
    scorer = SASRecScorer(train, N_ITEMS, SASRecConfig(hidden=16, max_len=8, max_epochs=5, time_budget_s=30))
    data_keys = [f"i{j}" for j in range(1, N_ITEMS + 1)]
    save_retriever(scorer.model, data_keys, tmp_path)
    covisit = CoVisitCandidates(train, N_ITEMS)
    generator = RetrieverCandidates(covisit, str(tmp_path), data_keys)
    history = [3, 4, 5]
    items, scores = generator.candidates(history, 10)
    co_items, _ = covisit.candidates(history, 10)
    retrieved = [i for i, _ in generator.retrieved(history, 10)]
    # CandidateConfig's shares scaled to 10: 2 slots for co-visitation, 6 for the retriever, the
    # rest filled from co-visitation; listed by source, co-visited first
    assert items[:2] == co_items[:2]
    sequential = [i for i in retrieved if i not in co_items[:2]][:6]
    assert items[-6:] == sequential
    assert items[2:4] == [i for i in co_items[2:] if i not in sequential][:2]
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
