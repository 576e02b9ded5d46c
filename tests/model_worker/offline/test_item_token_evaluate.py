"""`evaluate` of an item-token run: the documented keys, and the fused re-rank score."""

from pathlib import Path

import numpy as np

from model_worker.offline.data import DataConfig, Example
from model_worker.offline.evaluate import (
    MISS,
    EvalConfig,
    EvalContext,
    affinity_term,
    candidate_order_ranks,
    cold_start_metrics,
    covisit_term,
    evaluate,
    fused_ranks,
)
from model_worker.offline.tasks import TaskConfig
from model_worker.offline.train import TrainConfig, train

SLICE = Path(__file__).resolve().parents[2] / "data" / "beauty_slice"


def test_evaluating_an_item_token_run_reports_rerank_fused_and_cold_start(tmp_path):
    config = TrainConfig(out_dir=str(tmp_path), content="none", item_init="random", stages=("pretrain",),
                         pretrain_steps=2, batch_size=8, validate_every_s=1e9, validate_users=50, cold_items_share=0.05,
                         threads=1)
    train(DataConfig(str(SLICE)), TaskConfig(), config)
    result = evaluate(EvalConfig(max_users=200, baselines=("popularity", "markov"), threads=1), model_dir=str(tmp_path))
    metrics = {"hr@1", "hr@5", "hr@10", "ndcg@5", "ndcg@10"}
    assert metrics <= set(result["sequential"]) and result["sequential"]["n_users"] == 200
    assert metrics <= set(result["rerank"]["model"]) and metrics <= set(result["rerank"]["candidates"])
    fused = result["rerank"]["fused"]
    assert metrics <= set(fused) and fused["n_validation_users"] == 50
    assert str(fused["weight"]) in fused["validation_ndcg@10"]
    assert {"n_users", "n_items"} <= set(result["cold_start"])
    recall = result["retrieval_recall"]
    assert recall["k"] == 100 and recall["candidates"] >= result["rerank"]["candidates"]["hr@10"]
    assert recall["model"] >= result["sequential"]["hr@10"]  # the model's top 100 holds its top 10
    assert 0 <= recall["merged"] <= 1
    for name in ("popularity", "markov"):
        assert metrics <= set(result["baselines"][name]["rerank"])


def test_a_cold_item_is_ranked_through_the_trained_item_nearest_its_content():
    import torch

    from model_worker.vip5model.config import VIP5Config
    from model_worker.vip5model.model import VIP5Model
    from model_worker.vip5model.tokenizer import build_template_tokenizer

    config = VIP5Config(backbone="tiny", item_ids="tokens", n_items=200, image_feature_dim=6, dropout_rate=0.0)
    model = VIP5Model.build(config, build_template_tokenizer([config.sequence_prompt], vocab_size=300), seed=0).eval()
    features = np.random.default_rng(0).standard_normal((200, 6)).astype(np.float32)
    history = (3, 7)
    best = int(model.next_item_scores(torch.tensor([history]), torch.tensor([2]))[0, 8:].argmax()) + 8
    cold = 5  # the model's favourite's twin by content, never trained
    features[cold - 1] = features[best - 1]
    model.item_tokens.set_features(range(1, 201), features)
    context = _context([Example(1, history, cold)], [], [])
    before = model.item_tokens.has_id.clone(), model.item_tokens.has_feature.clone()
    result = cold_start_metrics(model, context, max_len=50, cold=frozenset({cold}))
    assert result["with_content"]["hr@10"] == 1.0
    assert result["without_content"]["hr@10"] == 0.0 and result["content_part_only"]["hr@10"] == 0.0
    assert torch.equal(model.item_tokens.has_id, before[0]) and torch.equal(model.item_tokens.has_feature, before[1])


def _context(examples, rerank, scores, affinity=()) -> EvalContext:
    return EvalContext(data=None, examples=tuple(examples), candidates=(), train=(), config=EvalConfig(),
                       rerank=tuple(map(tuple, rerank)), rerank_scores=tuple(map(tuple, scores)),
                       rerank_affinity=tuple(map(tuple, affinity)))


def test_fusion_weight_zero_is_the_model_order_and_a_large_weight_follows_co_visitation():
    examples = [Example(1, (9,), 3), Example(2, (9,), 5)]
    rerank, covisit = [(1, 2, 3), (4, 5, 6)], [(0.5, 4.0, 1.0), (-1.0, 2.0, 3.0)]
    model = [np.log([0.2, 0.1, 0.7]), np.log([0.6, 0.3, 0.1])]
    context = _context(examples, rerank, covisit)
    assert fused_ranks(model, covisit_term(context), context, 0.0) == [0, 1]  # 0-based ranks
    assert fused_ranks(model, covisit_term(context), context, 100.0) == [1, 1]  # item 2 before 3; item 6 before 5


def test_with_the_retriever_a_large_weight_follows_its_affinity():
    examples = [Example(1, (9,), 3), Example(2, (9,), 5)]
    model = [np.log([0.2, 0.1, 0.7]), np.log([0.6, 0.3, 0.1])]
    affinity = [(3.0, 1.0, 2.0), (0.0, 5.0, 1.0)]  # item 3 second, item 5 first by the retriever
    context = _context(examples, [(1, 2, 3), (4, 5, 6)], [(0.0,) * 3] * 2, affinity)
    assert fused_ranks(model, affinity_term(context), context, 0.0) == [0, 1]
    assert fused_ranks(model, affinity_term(context), context, 100.0) == [1, 0]


def test_the_candidates_own_order_ranks_its_first_item_first():
    context = _context([Example(1, (9,), 1), Example(2, (9,), 6), Example(3, (9,), 7)],
                       [(1, 2, 3), (4, 5, 6), (4, 5, 6)], [(0.0,) * 3] * 3)
    assert candidate_order_ranks(context) == [0, 2, MISS]  # 0-based, as every other rank here


def test_a_target_outside_the_candidates_is_a_miss_whatever_the_weight():
    context = _context([Example(1, (9,), 7)], [(1, 2)], [(1.0, 2.0)])
    assert fused_ranks([np.log([0.5, 0.5])], covisit_term(context), context, 1.0) == [MISS]
