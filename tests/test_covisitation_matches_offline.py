"""The streaming co-visitation (index/) against the offline batch generator (model_worker/offline/)
on the same training log: the two packages share no code, so this is where they are held equal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from index.candidate_recall import RecallBenchConfig, candidate_recall, interleaved, read_sequences
from index.covisitation import Covisitation, CovisitationConfig
from model_worker.offline.candidates import CoVisitCandidates, CoVisitConfig

SLICE = Path(__file__).resolve().parent / "data" / "beauty_slice"


@pytest.fixture(scope="module")
def sequences() -> list[list[str]]:
    return read_sequences(SLICE)


def test_streamed_in_any_interleaving_without_decay_or_pruning_it_scores_as_the_batch(sequences):
    train = [seq[:-2] for seq in sequences]
    n_items = max(int(i) for seq in sequences for i in seq)
    batch = CoVisitCandidates([[int(i) for i in seq] for seq in train], n_items,
                              CoVisitConfig(neighbours=n_items))
    stream = Covisitation(CovisitationConfig(neighbours=n_items, half_life_events=None))
    for user, pos in interleaved(train, np.random.default_rng(3)):
        stream.record(train[user][:pos], train[user][pos])
    for seq in sequences[:200]:
        history = seq[:-1]
        items, scores = batch.candidates([int(i) for i in history], 100)
        expected = {str(i): s for i, s in zip(items, scores, strict=True) if s > 0}  # drop popularity fill
        got = dict(stream.candidates(history, len(expected)))
        assert got.keys() == expected.keys() or _only_ties_differ(got, expected)
        assert [got[i] for i in got.keys() & expected.keys()] == pytest.approx(
            [expected[i] for i in got.keys() & expected.keys()])


def _only_ties_differ(got: dict[str, float], expected: dict[str, float]) -> bool:
    """The lists may cut a run of equal scores at different items."""
    lowest = min(expected.values())
    return all(abs(s - lowest) < 1e-9 for s in [*(got[i] for i in got.keys() - expected.keys()),
                                                *(expected[i] for i in expected.keys() - got.keys())])


def test_with_default_decay_and_pruning_its_recall_stays_the_batchs(sequences):
    result = candidate_recall(sequences, RecallBenchConfig(users=1000, seed=0))
    train = [[int(i) for i in seq[:-2]] for seq in sequences]
    batch = CoVisitCandidates(train, max(int(i) for seq in sequences for i in seq))
    rng = np.random.default_rng(0)
    interleaved(train, rng)  # the bench draws its interleaving, then its users: the same users here
    sample = rng.choice(len(sequences), size=1000, replace=False)
    hits = [int(sequences[u][-1]) in batch.candidates([int(i) for i in sequences[u][:-1]], 100)[0][:100]
            for u in sample.tolist()]
    assert result["recall"]["covisit"]["recall@100"] == pytest.approx(np.mean(hits), abs=0.02)
