"""Popularity, Markov and SASRec on toy sequences."""

import numpy as np

from index.sasrec import SASRec, SASRecConfig, SASRecScorer, left_pad
from model_worker.offline.baselines import Markov, NextId, Popularity

TOY = [(1, 2, 3, 1, 2), (2, 3, 4), (1, 2, 3)]


def test_popularity_ranks_by_training_counts():
    scores = Popularity(TOY, n_items=5).scores([(4,), ()])
    assert scores.shape == (2, 6) and scores[0, 0] == -np.inf
    assert list(scores[0, 1:]) == [3, 4, 3, 1, 0]
    assert np.array_equal(scores[0], scores[1])


def test_markov_follows_last_item_then_backs_off_to_popularity():
    markov = Markov(TOY, n_items=5)
    after_two = markov.scores([(5, 2)])[0]
    assert int(np.argmax(after_two)) == 3  # 2 -> 3 three times, 2 -> ... nothing else
    after_three = markov.scores([(3,)])[0]
    assert after_three[1] > after_three[4] > after_three[2]  # 3->1 and 3->4 once each; popularity breaks the tie
    unseen = markov.scores([(5,)])[0]
    assert int(np.argmax(unseen)) == 2  # no transition from 5: most popular item


def test_scores_give_direct_candidates_by_indexing():
    candidates = np.array([4, 2, 5])
    row = Popularity(TOY, n_items=5).scores([(1,)])[0]
    assert list(row[candidates]) == [1, 4, 0]


def test_sasrec_trimming_left_padding_keeps_outputs():
    model = SASRec(20, SASRecConfig(max_len=8, dropout=0.0)).eval()
    full = np.array([left_pad([3, 4, 5], 8), left_pad([1, 2], 8)])
    trimmed = full[:, 5:]
    import torch

    with torch.no_grad():
        a = model(torch.from_numpy(full))[:, -1]
        b = model(torch.from_numpy(trimmed))[:, -1]
    assert torch.allclose(a, b, atol=1e-5)


def test_sasrec_learns_a_deterministic_cycle():
    n_items = 30
    cycle = list(range(1, n_items + 1))
    train = [tuple(cycle[s:] + cycle[:s])[:12] for s in range(n_items) for _ in range(4)]
    config = SASRecConfig(hidden=32, max_len=12, dropout=0.0, lr=5e-3, batch_size=32, max_epochs=60,
                          time_budget_s=60, seed=0)
    scorer = SASRecScorer(train, n_items, config)
    histories = [tuple(cycle[s:] + cycle[:s])[:6] for s in range(n_items)]
    scores = scorer.scores(histories)
    for row, history in zip(scores, histories, strict=True):
        row[list(history)] = -np.inf  # training negatives never include the user's own items
    predicted = np.argmax(scores, axis=1)
    expected = [h[-1] % n_items + 1 for h in histories]
    assert np.mean(predicted == np.array(expected)) >= 0.9
    assert scorer.info()["epochs"] >= 1


def test_next_id_ranks_the_ids_after_the_largest_seen_first():
    row = NextId([], n_items=8).scores([(2, 5, 3)])[0]
    order = [int(i) for i in np.argsort(-row)[:-1]]  # drop column 0 (-inf)
    assert order == [6, 7, 8, 5, 4, 3, 2, 1]
