"""`vip5 train` and `vip5 evaluate` through the real command line entry point."""

import json

from vip5.cli import main


def test_train_then_evaluate_from_the_command_line(reviews_file, tmp_path, capsys):
    out = tmp_path / "run"
    status = main(["train", "--data", str(reviews_file), "--core", "1", "--numbering", "original", "--out", str(out),
                   "--item-ids", "digits", "--preset", "tiny",
                   "--pretrain-steps", "3", "--adapt-steps", "2", "--batch-size", "4", "--train-candidates", "4",
                   "--dropout", "0.2", "--weight-decay", "0.05", "--content-loss-weight", "0.5",
                   "--threads", "1", "--json"])
    trained = json.loads(capsys.readouterr().out)
    assert status == 0 and trained["stages"] == ["pretrain", "adapt"]
    assert trained["data"]["numbering"] == "original"
    recipe = json.loads((out / "train_config.json").read_text())["train"]
    assert (recipe["dropout_rate"], recipe["weight_decay"]) == (0.2, 0.05)
    assert recipe["model_overrides"] == {"content_loss_weight": 0.5}
    status = main(["evaluate", "--model-dir", str(out), "--max-users", "4", "--baselines", "popularity,markov",
                   "--max-explanations", "2", "--direct-negatives", "9", "--threads", "1", "--method", "topk",
                   "--json"])
    result = json.loads(capsys.readouterr().out)
    assert status == 0 and result["numbering"] == "original"  # follows the trained run
    assert {"sequential", "direct", "explanation", "baselines"} <= set(result)
    assert set(result["baselines"]) == {"popularity", "markov"}
