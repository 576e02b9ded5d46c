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


def test_features_outside_the_rows_are_refused():
    tokens, _ = _tokens()
    with pytest.raises(ValueError, match="rows"):
        tokens.set_features([0], np.ones((1, 4), np.float32))
    with pytest.raises(ValueError, match="features must be"):
        tokens.set_features([1], np.ones((1, 3), np.float32))
