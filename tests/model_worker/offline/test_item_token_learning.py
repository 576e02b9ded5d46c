"""Item-token VIP5 learns from scratch on real data: a short run beats popularity on validation.

A regression in the model, the sampler, the loss or the optimizer recipe shows up here as a model
that no longer beats the most popular items on held-out next items of real users.
"""

from pathlib import Path

import numpy as np

from model_worker.offline.baselines import Popularity
from model_worker.offline.data import DataConfig, load_data, training_split
from model_worker.offline.evaluate import ItemTokenScorer, load_run
from model_worker.offline.metrics import rank_metrics, rank_of_target
from model_worker.offline.tasks import TaskConfig
from model_worker.offline.train import TrainConfig, train

SLICE = Path(__file__).resolve().parents[2] / "data" / "beauty_slice"


def _validation_hr10(scorer, valid) -> float:
    rng, ranks = np.random.default_rng(0), []
    for start in range(0, len(valid), 512):
        chunk = valid[start:start + 512]
        for row, example in zip(scorer.scores([e.history for e in chunk]), chunk, strict=True):
            row[list(set(example.history))] = -np.inf
            ranks.append(rank_of_target(row, example.target, rng=rng))
    return rank_metrics(ranks)["hr@10"]


def test_a_short_training_on_a_slice_of_beauty_beats_popularity(tmp_path):
    data_config = DataConfig(str(SLICE))
    # random item ids and the from-scratch learning rate: the model's own learning, no retriever's head start
    config = TrainConfig(out_dir=str(tmp_path), content="none", item_init="random", lr=3e-3, stages=("pretrain",),
                         pretrain_steps=300, time_budget_s=150, validate_every_s=1e9, threads=1)
    train(data_config, TaskConfig(), config)
    model, _, _ = load_run(tmp_path)
    data = load_data(data_config)
    split = training_split(data, train_on_valid=config.train_on_valid, validate_users=config.validate_users)
    popularity = Popularity(split.train, data.n_items)
    model_hr10 = _validation_hr10(ItemTokenScorer(model), split.valid)
    assert model_hr10 > _validation_hr10(popularity, split.valid) * 1.5, model_hr10


def test_an_item_token_run_saves_its_item_keys_and_scores_the_same_after_loading(tmp_path):
    import torch

    from model_worker.vip5model.model import VIP5Model

    config = TrainConfig(out_dir=str(tmp_path), content="none", item_init="random", stages=("pretrain",),
                         pretrain_steps=2, batch_size=8, validate_every_s=1e9, threads=1)
    train(DataConfig(str(SLICE)), TaskConfig(), config)
    model, _, _ = load_run(tmp_path)
    again = VIP5Model.from_pretrained(tmp_path / "model")
    data = load_data(DataConfig(str(SLICE)))
    assert model.item_vocabulary.keys == list(data.item_keys)
    histories = [list(s[:4]) for s in data.sequences[:3]]
    assert np.allclose(ItemTokenScorer(model).scores(histories), ItemTokenScorer(again).scores(histories))
    assert torch.equal(model.item_tokens.id_embedding.weight, again.item_tokens.id_embedding.weight)
