"""Item tokens: rows, content parts, and items that arrive after training."""

import numpy as np
import pytest
import torch

from model_worker.vip5model.items import ItemTokens, ItemVocabulary
from model_worker.vip5model.model import ImageMapping


def _tokens(n_items=5, d_model=8, feature_dim=4):
    torch.manual_seed(0)
    return ItemTokens(n_items, d_model, feature_dim), ImageMapping(feature_dim, d_model, 2)


def test_vocabulary_rows_are_stable_and_new_keys_append(tmp_path):
    vocab = ItemVocabulary(["a", "b"])
    assert vocab.add(["b", "c"]) == [2, 3] and vocab.row("a") == 1 and vocab.row("zz") is None
    vocab.save(tmp_path / "keys.json")
    assert ItemVocabulary.load(tmp_path / "keys.json").keys == ["a", "b", "c"]


def test_an_item_with_content_gets_its_mapped_feature_added_to_its_row():
    tokens, mapping = _tokens()
    before = tokens.table(mapping).detach().clone()
    tokens.set_features([2], np.ones((1, 4), np.float32))
    after = tokens.table(mapping).detach()
    assert not torch.allclose(after[2], before[2])
    assert torch.allclose(after[[1, 3, 4, 5]], before[[1, 3, 4, 5]])


def test_an_item_added_after_training_is_named_by_its_content_alone():
    tokens, mapping = _tokens()
    tokens.grow(7)
    assert tokens.n_items == 7 and tokens.bos == 8 and tokens.id_embedding.weight.shape[0] == 9
    assert torch.count_nonzero(tokens.table(mapping)[6:8]) == 0  # no id part, no content yet
    tokens.set_features([7], np.ones((1, 4), np.float32))
    ids, content = tokens.parts(mapping)
    assert torch.count_nonzero(ids[7]) == 0 and torch.count_nonzero(content[7]) > 0


def test_an_item_added_after_training_borrows_the_id_of_its_nearest_trained_item_by_content():
    tokens, mapping = _tokens()
    features = torch.eye(4)[[0, 1, 2, 3, 3]] + 0.01  # item 5 is item 4's twin, 1-3 are far from both
    tokens.set_features(range(1, 6), features.numpy())
    tokens.grow(6)
    tokens.set_features([6], (features[3] * 2).numpy()[None])  # same direction as items 4 and 5
    ids, _ = tokens.parts(mapping, neighbours=2, temperature=0.01)
    weights = tokens.id_embedding.weight
    assert torch.allclose(ids[6], (weights[4] + weights[5]) / 2, atol=1e-5)  # equally near: equal weights
    assert torch.allclose(ids[1:6], weights[1:6])  # trained items keep their own ids
    ids_alone, _ = tokens.parts(mapping, neighbours=0)
    assert torch.count_nonzero(ids_alone[6]) == 0


def test_neighbour_weights_follow_similarity_and_the_temperature():
    tokens, mapping = _tokens(n_items=2)
    tokens.set_features([1, 2], np.array([[1, 0, 0, 0], [0.6, 0.8, 0, 0]], np.float32))
    query = torch.tensor([[1.0, 0.2, 0, 0]])  # nearer item 1
    weights = tokens.id_embedding.weight
    sharp = tokens.neighbour_ids(query, 2, temperature=1e-3)
    flat = tokens.neighbour_ids(query, 2, temperature=1e3)
    assert torch.allclose(sharp[0], weights[1], atol=1e-5)
    assert torch.allclose(flat[0], (weights[1] + weights[2]) / 2, atol=1e-3)


def test_an_item_without_content_borrows_nothing():
    tokens, mapping = _tokens()
    tokens.set_features(range(1, 6), np.ones((5, 4), np.float32))
    tokens.grow(6)  # item 6 has no feature
    ids, content = tokens.parts(mapping, neighbours=2)
    assert torch.count_nonzero(ids[6]) == 0 and torch.count_nonzero(content[6]) == 0


def test_features_outside_the_rows_are_refused():
    tokens, _ = _tokens()
    with pytest.raises(ValueError, match="rows"):
        tokens.set_features([0], np.ones((1, 4), np.float32))
    with pytest.raises(ValueError, match="features must be"):
        tokens.set_features([1], np.ones((1, 3), np.float32))
