import numpy as np
import pytest
import torch

from model_worker.vip5model.prompts import direct_prompt, sequential_prompt
from model_worker.vip5model.scoring import (
    CatalogueScorer,
    constrained_beam,
    score_candidates,
    score_naive,
    top_k_items,
)
from model_worker.vip5model.trie import ItemTrie

from .conftest import ADAPTER_KINDS


def _requests(n: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [[str(i) for i in rng.choice(np.arange(1, 30000), size, replace=False)] for _ in range(n)]


@pytest.mark.parametrize("kind", ADAPTER_KINDS)
def test_exact_trie_scores_equal_naive_scores(kind, make_model, features):
    model = make_model(kind)
    candidates = _requests(3, 40)
    prompts = [direct_prompt("B-7", u, c, history=list(range(1, 2 + u * 3))) for u, c in enumerate(candidates)]
    batch = model.encoder.encode(prompts, features, with_labels=False)  # prompts of different lengths
    exact = score_candidates(model, batch, [ItemTrie.from_items(model.encoder, c) for c in candidates])
    naive = score_naive(model, batch, [model.encoder.target_token_ids(c) for c in candidates])
    for e, n in zip(exact, naive, strict=True):
        assert torch.allclose(e, n, atol=1e-4)
        assert torch.equal(torch.argsort(e, descending=True, stable=True), torch.argsort(n, descending=True, stable=True))


def test_batched_scoring_equals_one_prompt_at_a_time(make_model, features):
    model = make_model()
    candidates = _requests(2, 25, seed=3)
    prompts = [direct_prompt("B-5", u, c) for u, c in enumerate(candidates)]
    tries = [ItemTrie.from_items(model.encoder, c) for c in candidates]
    together = score_candidates(model, model.encoder.encode(prompts, features, with_labels=False), tries)
    for prompt, trie, expected in zip(prompts, tries, together, strict=True):
        alone = score_candidates(model, model.encoder.encode([prompt], features, with_labels=False), [trie])[0]
        assert torch.allclose(alone, expected, atol=1e-4)


def test_catalogue_scores_match_one_big_trie(make_model, features):
    model = make_model()
    catalogue = [str(i) for i in range(1, 400)]
    batch = model.encoder.encode([sequential_prompt("A-3", 4, [5, 6, 7]), sequential_prompt("A-1", 9, [8])],
                                 features, with_labels=False)
    chunked = CatalogueScorer(model.encoder, catalogue, chunk_items=64).score(model, batch)  # (B, I)
    shared = score_candidates(model, batch, [ItemTrie.from_items(model.encoder, catalogue)] * 2)
    separate = score_candidates(model, batch, [ItemTrie.from_items(model.encoder, catalogue) for _ in range(2)])
    assert chunked.shape == (2, len(catalogue))
    assert torch.allclose(chunked, torch.stack(shared), atol=1e-4)
    assert torch.allclose(torch.stack(separate), torch.stack(shared), atol=1e-4)


def test_best_first_top_k_equals_the_top_of_the_full_ranking(make_model, features):
    model = make_model()
    catalogue = [str(i) for i in range(1, 700)]
    batch = model.encoder.encode([sequential_prompt("A-3", 4, [5, 6, 7]), sequential_prompt("A-1", 9, [8])],
                                 features, with_labels=False)
    full = CatalogueScorer(model.encoder, catalogue, chunk_items=256).score(model, batch)  # (B, I)
    trie = ItemTrie.from_items(model.encoder, catalogue)
    top = top_k_items(model, batch, [trie, trie], 10, nodes_per_step=16)
    for row, found in zip(full, top, strict=True):
        values, index = row.topk(10)
        assert [item for item, _ in found] == [catalogue[i] for i in index.tolist()]
        assert torch.allclose(torch.tensor([s for _, s in found]), values, atol=1e-4)


def test_scores_are_probabilities_of_distinct_ids(make_model, features):
    model = make_model()
    catalogue = [str(i) for i in range(1, 100)]
    batch = model.encoder.encode([sequential_prompt("A-3", 4, [5, 6])], features, with_labels=False)
    scores = CatalogueScorer(model.encoder, catalogue).score(model, batch)
    assert float(scores.exp().sum()) <= 1.0 + 1e-4 and bool((scores < 0).all())


@pytest.mark.parametrize("kind", ADAPTER_KINDS)
def test_constrained_beam_only_emits_valid_item_ids(kind, make_model, features):
    model = make_model(kind)
    candidates = _requests(2, 30, seed=7)
    batch = model.encoder.encode([direct_prompt("B-5", u, c) for u, c in enumerate(candidates)], features,
                                 with_labels=False)
    ranked = constrained_beam(model, batch, [ItemTrie.from_items(model.encoder, c) for c in candidates],
                              num_beams=8)
    for items, valid in zip(ranked, candidates, strict=True):
        assert len(items) >= 5
        assert all(item in valid for item, _ in items)
        assert len({item for item, _ in items}) == len(items)


def test_trie_allows_only_continuations_of_known_ids(tokenizer, make_model):
    model = make_model()
    trie = ItemTrie.from_items(model.encoder, ["12", "13", "2"])
    first = trie.allowed_next([])
    assert len(first) == 1  # every id starts with the word-start piece
    digits = tokenizer.convert_ids_to_tokens(trie.allowed_next(first))
    assert sorted(digits) == ["1", "2"]
    assert trie.item_for(model.encoder.target_token_ids(["13"])[0]) == "13"
    assert trie.item_for(model.encoder.target_token_ids(["14"])[0]) is None
