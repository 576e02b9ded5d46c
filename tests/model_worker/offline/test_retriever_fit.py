"""Fitting the learned sequential retriever offline, and starting VIP5's item tokens from it.

`vip5 train --item-init retriever` fits the retriever on the run's own split first; its item vectors
become the item tokens' starting point, and the retriever is saved beside the run so that the live
system can publish the same one.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from index.retriever import load_retriever
from index.sasrec import SASRec, SASRecConfig, sasrec_model
from model_worker.offline.data import DataConfig, Example, RecData
from model_worker.offline.retriever import item_attributes, validation_scores
from model_worker.offline.tasks import TaskConfig
from model_worker.offline.train import TrainConfig, init_item_tokens, train
from model_worker.vip5model.config import VIP5Config
from model_worker.vip5model.model import VIP5Model
from model_worker.vip5model.tokenizer import build_template_tokenizer

SLICE = Path(__file__).resolve().parents[2] / "data" / "beauty_slice"


def _mini_model(n_items: int = 5) -> VIP5Model:
    config = VIP5Config(backbone="mini", item_ids="tokens", n_items=n_items, image_feature_dim=8)
    return VIP5Model.build(config, build_template_tokenizer([config.sequence_prompt], vocab_size=300), seed=0)


class FixedScores:
    """Scores item j as j: the higher the id, the better."""

    def __init__(self, n_items: int):
        self.n_items = n_items

    def scores(self, histories):
        out = np.tile(np.arange(self.n_items + 1, dtype=np.float64), (len(histories), 1))
        out[:, 0] = -np.inf
        return out


def test_validation_scores_rank_the_target_among_items_outside_the_history():
    scorer = FixedScores(200)
    examples = [Example(1, (200, 199), 190),  # 198..191 above it: rank 8, a hit at 10
                Example(2, (), 190),          # 200..191 above it: rank 10, a miss at 10
                Example(3, (5,), 50)]         # rank 150: a miss at 100
    assert validation_scores(scorer, examples, batch=2) == {"users": 3, "hr@10": round(1 / 3, 4),
                                                            "recall@100": round(2 / 3, 4)}


def test_item_attributes_number_the_names_in_each_items_category_field():
    data = RecData(name="t", sequences=((1, 2),), user_keys=("u",), item_keys=("a", "b", "c"),
                   item_categories=("Makeup, Brand X", "", "Brand X, Nails"))
    assert item_attributes(data) == [[], [0, 1], [], [1, 2]]
    assert item_attributes(RecData(name="t", sequences=((1, 2),), user_keys=("u",), item_keys=("a", "b"))) is None


def test_item_tokens_start_from_the_retrievers_item_vectors_at_the_decoders_scale():
    model = _mini_model()
    retriever = SASRec(5, SASRecConfig(hidden=128))
    with torch.no_grad():
        retriever.final_norm.weight.fill_(2.0)  # states of RMS 2: item vectors scaled by 2 for RMS-1 states
    bos = model.item_tokens.id_embedding.weight[-1].clone()
    init_item_tokens(model, retriever)
    ids = model.item_tokens.id_embedding.weight
    assert torch.allclose(ids[1:6], retriever.item_table()[1:] * 2.0)
    assert torch.equal(ids[-1], bos)  # the start token keeps its own embedding


def test_item_tokens_start_from_the_towers_concatenated_vectors_at_their_joint_scale():
    model = _mini_model()
    retriever = sasrec_model(5, SASRecConfig(hidden=128, towers=2))
    with torch.no_grad():
        retriever.towers[0].final_norm.weight.fill_(4.0)
        retriever.towers[1].final_norm.weight.fill_(4.0)  # states of RMS 4 / 2 towers
    init_item_tokens(model, retriever)
    assert torch.allclose(model.item_tokens.id_embedding.weight[1:6], retriever.item_table()[1:] * 2.0)


def test_a_retriever_of_another_size_is_refused():
    model = _mini_model()
    with pytest.raises(ValueError, match="do not fit"):
        init_item_tokens(model, SASRec(5, SASRecConfig(hidden=64)))
    with pytest.raises(ValueError, match="do not fit"):
        init_item_tokens(model, SASRec(6, SASRecConfig(hidden=128)))


def test_item_tokens_start_from_the_retriever_by_default_and_digit_ids_from_random():
    with pytest.raises(ValueError, match="item_ids='tokens'"):
        TrainConfig(out_dir="x", item_ids="digits", item_init="retriever")
    with pytest.raises(ValueError, match="item_init"):
        TrainConfig(out_dir="x", item_init="sasrec")
    assert (TrainConfig(out_dir="x").item_init, TrainConfig(out_dir="x").lr) == ("retriever", 1e-3)
    assert (TrainConfig(out_dir="x", item_ids="digits").item_init, TrainConfig(out_dir="x", item_ids="digits").lr) == (
        "random", 3e-3)  # a larger rate from random weights; it erodes the retriever's vectors


def test_a_run_with_retriever_init_saves_the_retriever_and_a_resumed_run_reuses_it(tmp_path):
    config = TrainConfig(out_dir=str(tmp_path), content="none", stages=("pretrain",), pretrain_steps=2,
                         batch_size=8, validate_every_s=1e9, threads=1, item_init="retriever", time_budget_s=20,
                         freeze_item_ids=True)
    result = train(DataConfig(str(SLICE)), TaskConfig(), config)
    version, retriever, keys = load_retriever(tmp_path / "retriever")
    assert result["retriever"]["valid"]["users"] == config.validate_users
    assert result["train_s"] >= result["retriever"]["train_s"]
    assert retriever.config.hidden == 128 and len(keys) == retriever.n_items
    trained = VIP5Model.from_pretrained(tmp_path / "model").item_tokens.id_embedding.weight[1:-1]
    scale = retriever.final_scale().norm() / retriever.config.hidden ** 0.5
    assert torch.allclose(trained, retriever.item_table()[1:] * scale, atol=1e-6)  # frozen: still the start
    written = (tmp_path / "retriever" / "retriever.json").stat().st_mtime_ns
    again = train(DataConfig(str(SLICE)), TaskConfig(), replace(config, pretrain_steps=3),
                  resume=True)
    assert (tmp_path / "retriever" / "retriever.json").stat().st_mtime_ns == written
    assert again["retriever"] == json.loads((tmp_path / "retriever" / "retriever.json").read_text())["info"]
    assert load_retriever(tmp_path / "retriever")[0] == version
    other_split = train(DataConfig(str(SLICE)), TaskConfig(), replace(config, validate_users=500))
    assert other_split["retriever"]["split"]["validate_users"] == 500  # fitted again on that split
    assert other_split["retriever"]["valid"]["users"] == 500
