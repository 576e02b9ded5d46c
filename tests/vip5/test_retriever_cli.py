"""`vip5 retriever train`: trained on `vip5 train`'s split, scored on its held-out validation users;
two towers, label smoothing and a weight average by default; `stack` joins trained retrievers."""

from __future__ import annotations

import json
from pathlib import Path

from vip5.cli import build_parser

SLICE = Path(__file__).resolve().parents[1] / "data" / "beauty_slice"


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
    assert (result["towers"], result["hidden"]) == (2, 256)  # two independent 128-wide SASRecs by default
    assert (result["label_smoothing"], result["ema_decay"]) == (0.1, 0.998)
    assert result["content"] == "text" and result["content_dim"] == 384  # the text encoder's vectors
    assert result["attributes"] is None  # the slice has no item2attributes.json
    assert (tmp_path / "content_vectors.npy").exists()  # cached for the next run
    assert 0 < result["valid"]["users"] <= 2000 and 0 <= result["valid"]["recall@100"] <= 1
    assert json.loads((tmp_path / "retriever.json").read_text())["info"]["valid"] == result["valid"]


def test_a_replay_publishes_the_runs_own_retriever_unless_told_otherwise(tmp_path):
    from vip5.bench_replay import replay_retriever

    assert replay_retriever(None, tmp_path) is None  # a run without one: no sequential source
    (tmp_path / "retriever").mkdir()
    assert replay_retriever(None, tmp_path) == tmp_path / "retriever"
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "vip5_config.json").write_text("{}")
    assert replay_retriever(None, tmp_path / "model") == tmp_path / "retriever"  # --model-dir RUN/model
    assert replay_retriever("none", tmp_path) is None
    assert replay_retriever("/elsewhere", tmp_path) == Path("/elsewhere")


def test_stack_joins_independently_trained_retrievers_into_one_of_all_their_towers(tmp_path):
    def train(seed):
        out = tmp_path / f"seed{seed}"
        args = build_parser().parse_args(["retriever", "train", "--data", str(SLICE), "--out", str(out),
                                          "--seed", str(seed), "--max-epochs", "1", "--threads", "1",
                                          "--content", "none", "--no-attributes", "--json"])
        return args.handler(args)["version"], out

    (first, one), (second, two) = train(0), train(1)
    args = build_parser().parse_args(["retriever", "stack", "--dirs", str(one), str(two), "--out",
                                      str(tmp_path / "stacked"), "--json"])
    result = args.handler(args)
    assert (result["towers"], result["hidden"]) == (4, 512)  # two default retrievers of two 128-wide towers
    assert [p["version"] for p in result["stacked"]] == [first, second]
    saved = json.loads((tmp_path / "stacked" / "retriever.json").read_text())
    assert saved["version"] == result["version"] and saved["config"]["towers"] == 4
