"""Re-ranking with an item-token model: the same scores as full-catalogue scoring, and items the
model has never seen scored through their content."""

import numpy as np
import torch

from model_worker.rerank import Reranker, ScoringRequest
from model_worker.vip5model.config import VIP5Config
from model_worker.vip5model.items import ItemVocabulary
from model_worker.vip5model.model import VIP5Model
from model_worker.vip5model.tokenizer import build_template_tokenizer


def _model(n_items=30, feature_dim=6):
    config = VIP5Config(backbone="tiny", item_ids="tokens", n_items=n_items, image_feature_dim=feature_dim,
                        dropout_rate=0.0)
    tokenizer = build_template_tokenizer([config.sequence_prompt], vocab_size=300)
    model = VIP5Model.build(config, tokenizer, seed=0).eval()
    model.item_vocabulary = ItemVocabulary(f"sku-{i}" for i in range(1, n_items + 1))
    rng = np.random.default_rng(0)
    model.item_tokens.set_features(range(1, n_items + 1), rng.standard_normal((n_items, feature_dim)))
    return model


def test_candidate_scores_equal_the_full_catalogue_scores_of_the_same_items():
    model = _model()
    request = ScoringRequest(user_id="u", history=("sku-3", "sku-7", "sku-1"), candidates=("sku-9", "sku-2", "sku-20"))
    scores = Reranker(model).score([request])[0]
    full = model.next_item_scores(torch.tensor([[3, 7, 1]]), torch.tensor([3]))[0]
    assert np.allclose(scores, full[[9, 2, 20]].double().numpy(), atol=1e-5)


def test_an_unseen_item_is_scored_by_its_content_and_one_without_content_last():
    model = _model()
    feature = np.ones(6, np.float32)
    reranker = Reranker(model, image_lookup={"new-item": feature})
    request = ScoringRequest(user_id="u", history=("sku-3", "unknown-history-item"),
                            candidates=("new-item", "no-content", "sku-4"))
    scores = reranker.score([request])[0]
    state = model.history_states(torch.tensor([[3]]), torch.tensor([1]))[0]
    expected = float(state @ model.new_item_tokens(torch.tensor(feature)[None])[0])
    assert np.isclose(scores[0], expected, atol=1e-5)
    assert scores[1] == float("-inf") and np.isfinite(scores[2])


def test_an_unseen_item_with_a_catalogue_items_content_is_scored_like_that_item():
    model = _model()
    twin_of_sku_4 = model.item_tokens.features[4].numpy()
    reranker = Reranker(model, image_lookup={"new-item": twin_of_sku_4})
    request = ScoringRequest(user_id="u", history=("sku-3", "sku-7"), candidates=("new-item", "sku-4", "sku-5"))
    new, known, other = reranker.score([request])[0]
    assert np.isclose(new, known, atol=1e-4) and not np.isclose(new, other, atol=1e-4)


def test_the_item_table_follows_the_new_item_rule():
    model = _model()
    model.item_tokens.has_id[5] = False  # served as an item that arrived after training
    with torch.no_grad():
        borrowed = model.item_table()
        model.config = model.config.replace(new_item_neighbours=0)
        alone = model.item_table()
    assert not torch.allclose(borrowed[5], alone[5]) and torch.allclose(borrowed[6:], alone[6:])


def test_the_model_adds_its_best_catalogue_items_to_the_candidates_but_never_history_items():
    from model_worker.rerank import RerankConfig

    model = _model()
    reranker = Reranker(model, config=RerankConfig(catalogue_k=5))
    request = ScoringRequest(user_id="u", history=("sku-3", "sku-7"), candidates=("sku-9",))
    (extended,) = reranker.with_catalogue_candidates([request])
    added = extended.candidates[1:]
    full = model.next_item_scores(torch.tensor([[3, 7]]), torch.tensor([2]))[0]
    full[[3, 7, 9]] = float("-inf")
    expected = [f"sku-{int(i)}" for i in torch.topk(full, 5).indices]
    assert extended.candidates[0] == "sku-9" and list(added) == expected
    assert not {"sku-3", "sku-7"} & set(added)
    assert Reranker(model, config=RerankConfig(catalogue_k=0)).with_catalogue_candidates([request]) == [request]


def test_an_online_round_tunes_an_item_token_model_on_the_sequences_it_is_given():
    from model_worker.tuning import TuneConfig, tune

    model = _model()
    sequences = [[f"sku-{i}", f"sku-{i + 1}", f"sku-{i + 2}", "not-in-the-vocabulary"] for i in range(1, 20)]
    fit = tune(model, [], {}, TuneConfig(steps=30, batch_size=8, lr=1e-2, warmup_steps=2), stage="pretrain",
               sequences=sequences)
    assert fit["steps"] == 30 and fit["loss_last"] < fit["loss_first"]


def test_the_item_table_is_reused_until_a_tensor_it_depends_on_changes():
    model = _model()
    with torch.no_grad():
        first = model.item_table()
        assert model.item_table() is first
        model.image_mapping.net[0].weight.add_(0.1)  # an in-place update (as an adapter copy is)
        second = model.item_table()
        assert second is not first and not torch.allclose(second, first)
        model.item_tokens.set_features([1], np.zeros((1, 6), np.float32))
        assert model.item_table() is not second


def test_the_task_prompt_is_encoded_once_until_an_encoder_tensor_changes():
    model = _model()
    with torch.no_grad():
        first = model.task_prompt_states(2)
        assert first.shape[0] == 2 and model.task_prompt_states(3)[0].data_ptr() == first[0].data_ptr()
        encoder = model.backbone.get_encoder()
        weight = next(p for n, p in encoder.named_parameters() if "layer_norm" in n)
        weight.add_(0.5)  # an in-place update, as an adapter copy is
        second = model.task_prompt_states(2)
        assert not torch.allclose(second, first)
        weight.data = weight.data.clone() - 0.5  # a slot swap points the parameter at other tensors
        assert torch.allclose(model.task_prompt_states(2), first, atol=1e-6)
    model.train()
    assert model.task_prompt_states(1).requires_grad  # training always encodes afresh
