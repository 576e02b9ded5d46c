"""Ranking and text metrics against hand-computed values."""

import math

import numpy as np
import pytest

from model_worker.offline.metrics import (
    corpus_bleu,
    hit_rate_at_k,
    lcs_length,
    ndcg_at_k,
    rank_in_list,
    rank_metrics,
    rank_of_target,
    rouge_l,
    rouge_n,
    text_metrics,
)


def test_hit_rate_and_ndcg_from_ranks():
    ranks = [0, 2, 7, 20]  # first place, third, eighth, a miss
    assert hit_rate_at_k(ranks, 1) == 0.25
    assert hit_rate_at_k(ranks, 5) == 0.5
    assert hit_rate_at_k(ranks, 10) == 0.75
    assert ndcg_at_k(ranks, 5) == pytest.approx((1 + 1 / math.log2(4)) / 4)
    assert ndcg_at_k(ranks, 10) == pytest.approx((1 + 0.5 + 1 / math.log2(9)) / 4)
    assert set(rank_metrics(ranks)) == {"hr@1", "hr@5", "hr@10", "ndcg@5", "ndcg@10"}


def test_rank_in_list_counts_absent_target_as_miss():
    assert rank_in_list([5, 3, 9], 9) == 2
    assert rank_in_list([5, 3, 9], 4) == 3


def test_rank_of_target_breaks_ties_at_random():
    rng = np.random.default_rng(0)
    assert rank_of_target(np.array([0.1, 0.9, 0.5]), 2, rng=rng) == 1
    flat = np.zeros(10)
    ranks = [rank_of_target(flat, 3, rng=rng) for _ in range(2000)]
    assert set(ranks) == set(range(10))
    assert np.mean(ranks) == pytest.approx(4.5, abs=0.3)


def test_bleu_is_100_for_identical_text_and_0_without_4gram_overlap():
    assert corpus_bleu(["the sound is great and clear"], ["the sound is great and clear"]) == pytest.approx(100.0)
    assert corpus_bleu(["great sound"], ["the sound is great"]) == 0.0


def test_bleu_hand_computed_with_brevity_penalty():
    # hyp (5 words) vs ref (6 words): 1-grams 5/5, 2-grams 4/4, 3-grams 3/3, 4-grams 1/2
    hyp, ref = "a b c d x", "a b c d e f"
    # clipped: 1g {a b c d} match 4 of 5; 2g {ab bc cd} 3 of 4; 3g {abc bcd} 2 of 3; 4g {abcd} 1 of 2
    expected = math.exp(1 - 6 / 5) * math.exp((math.log(4 / 5) + math.log(3 / 4) + math.log(2 / 3) + math.log(1 / 2)) / 4)
    assert corpus_bleu([hyp], [ref]) == pytest.approx(100 * expected)


def test_rouge_hand_computed():
    hyp, ref = "the cat sat on mat".split(), "the cat is on the mat".split()
    # unigrams: overlap {the, cat, on, mat} = 4; P = 4/5, R = 4/6
    assert rouge_n(hyp, ref, 1) == pytest.approx(2 * (4 / 5) * (4 / 6) / (4 / 5 + 4 / 6))
    # bigrams: hyp {the cat, cat sat, sat on, on mat}, ref {the cat, cat is, is on, on the, the mat}: 1
    assert rouge_n(hyp, ref, 2) == pytest.approx(2 * (1 / 4) * (1 / 5) / (1 / 4 + 1 / 5))
    assert lcs_length(hyp, ref) == 4  # the cat on mat
    assert rouge_l(hyp, ref) == pytest.approx(2 * (4 / 5) * (4 / 6) / (4 / 5 + 4 / 6))


def test_text_metrics_keys_are_percentages():
    result = text_metrics(["works great"], ["works great"])
    assert set(result) == {"bleu4", "rouge_1", "rouge_2", "rouge_l"}
    assert result["rouge_1"] == pytest.approx(100.0) and result["rouge_l"] == pytest.approx(100.0)
