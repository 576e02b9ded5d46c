"""`vip5 retriever train`: trained on `vip5 train`'s split, scored on its held-out validation users."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from model_worker.offline.data import Example, RecData
from vip5.cli import build_parser
from vip5.retriever_cli import item_attributes, validation_scores

SLICE = Path(__file__).resolve().parents[1] / "data" / "beauty_slice"


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


def test_train_without_side_information_uses_item_ids_only(tmp_path):
    args = build_parser().parse_args(["retriever", "train", "--data", str(SLICE), "--out", str(tmp_path),
                                      "--max-epochs", "1", "--threads", "1", "--content", "none", "--no-attributes",
                                      "--json"])
    result = args.handler(args)
    assert result["content"] == "none" and result["content_dim"] is None and result["attributes"] is None


def test_train_uses_the_runs_split_and_reports_its_validation_scores(tmp_path):
    args = build_parser().parse_args(["retriever", "train", "--data", str(SLICE), "--out", str(tmp_path),
                                      "--max-epochs", "1", "--threads", "1", "--json"])
    result = args.handler(args)
    assert result["train_on_valid"] is True and result["epochs"] == 1
    assert result["content"] == "text" and result["content_dim"] == 384  # the text encoder's vectors
    assert result["attributes"] is None  # the slice has no item2attributes.json
    assert (tmp_path / "content_vectors.npy").exists()  # cached for the next run
    assert 0 < result["valid"]["users"] <= 2000 and 0 <= result["valid"]["recall@100"] <= 1
    assert json.loads((tmp_path / "retriever.json").read_text())["info"]["valid"] == result["valid"]
