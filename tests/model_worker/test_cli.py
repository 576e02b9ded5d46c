import json

import pytest

from vip5.cli import main


def _run(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_model_info_reports_counts_by_group(capsys):
    info = _run(capsys, ["model", "info", "--preset", "tiny", "--image-feature-dim", "64", "--json"])
    assert info["trainable_params"] == sum(info[f"{g}_trainable"] for g in
                                           ("backbone", "layer_norms", "adapters", "image_mapping", "id_embeddings"))
    assert 0 < info["trainable_fraction"] < 1 and info["backbone_trainable"] == 0


def test_bench_rerank_reports_timings_and_agreement(capsys):
    out = _run(capsys, ["bench", "rerank", "--preset", "tiny", "--requests", "2", "--candidates", "20",
                        "--beams", "4", "--history", "3", "--vocab-size", "512", "--image-feature-dim", "16",
                        "--catalogue", "500", "--threads", "1",
                        "--json"])
    assert out["rankings_agree"] is True
    assert all(out[key] > 0 for key in ("exact_ms", "naive_ms", "beam_ms"))


TINY_RERANK = ["bench", "rerank", "--preset", "tiny", "--requests", "2", "--candidates", "20", "--beams", "4",
               "--history", "3", "--vocab-size", "512", "--image-feature-dim", "16", "--catalogue", "500", "--json"]


def test_bench_rerank_says_which_device_it_ran_on(capsys):
    assert _run(capsys, [*TINY_RERANK, "--threads", "1"])["device"] == "cpu"


def test_bench_rerank_settings_reject_an_unknown_device():
    from model_worker.bench_rerank import BenchSettings

    with pytest.raises(ValueError, match="BenchSettings.device"):
        BenchSettings(device="tpu")


@pytest.mark.gpu
def test_bench_rerank_runs_on_cuda_and_exact_matches_naive(capsys):
    out = _run(capsys, [*TINY_RERANK, "--device", "cuda"])
    assert out["device"] == "cuda" and out["gpu"]
    assert out["rankings_agree"] is True and out["max_abs_score_diff"] < 1e-3


def test_bench_train_prints_throughput_per_preset(capsys):
    import json

    from vip5.cli import main

    status = main(["bench", "train", "--presets", "tiny", "--items", "50", "--batch-size", "4", "--steps", "1",
                   "--threads", "1", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert status == 0 and [p["preset"] for p in result["presets"]] == ["tiny"]
    assert {"step_ms", "examples_per_s", "tokens_per_s", "params"} <= set(result["presets"][0])
    assert result["presets"][0]["tokens_per_s"] > result["presets"][0]["examples_per_s"] > 0
