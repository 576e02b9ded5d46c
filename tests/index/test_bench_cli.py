from __future__ import annotations

import json

import numpy as np
import pytest

from index.bench import bench_encoder, bench_index, synthetic_vectors, visual_neighbour_precision
from tests.index.conftest import FASHION_DIR
from vip5.cli import build_parser, main


def test_index_commands_are_registered_with_the_shared_flags():
    parser = build_parser()
    args = parser.parse_args(["bench", "index", "--quick", "--json"])
    assert args.quick and args.json and callable(args.handler)
    assert parser.parse_args(["bench", "visual-neighbours", "--data", "x"]).k == 10
    assert parser.parse_args(["index-info", "somewhere"]).snapshot == "somewhere"


def test_index_bench_reports_exact_and_approximate_per_size_and_the_chosen_kind_at_top_level():
    from index.item_index import IndexConfig

    result = bench_index([500, 2000], 16, config=IndexConfig(dim=16, approx_min_items=1000))
    assert [r["items"] for r in result["runs"]] == [500, 2000]
    assert [r["chosen_kind"] for r in result["runs"]] == ["flat", "ivf"]
    small, largest = result["runs"]
    for run in result["runs"]:
        assert run["exact"]["kind"] == "flat" and run["approximate"]["kind"] == "ivf"
        assert run["exact"]["recall_at_100"] == 1.0
        for key in ("bulk_add_per_s", "stream_add_per_s", "search_batch1", "search_batch64", "rss_growth_mb"):
            assert key in run["exact"] and key in run["approximate"]
    assert small["recall_at_100"] == 1.0 and small["search_batch1"] == small["exact"]["search_batch1"]
    assert largest["search_batch1"] == largest["approximate"]["search_batch1"]
    assert result["recall_at_100"] == largest["recall_at_100"] and 0 < result["recall_at_100"] <= 1
    assert result["search_p99_ms"] == largest["search_batch1"]["p99_ms"]
    assert largest["search_batch64"]["batch"] == 64
    assert [s["chosen_kind"] for s in result["summary"]] == ["flat", "ivf"]
    assert result["summary"][1]["approximate_recall_at_100"] == largest["approximate"]["recall_at_100"]


def test_synthetic_vectors_are_unit_rows_and_reproducible():
    a, b = synthetic_vectors(300, 8, seed=3), synthetic_vectors(300, 8, seed=3)
    assert a.shape == (300, 8) and np.array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="distribution"):
        synthetic_vectors(3, 8, distribution="zipf")


def test_encoder_bench_reports_images_per_second_per_batch(lite0_encoder, fashion):
    result = bench_encoder(fashion[0], (1, 4), rounds=1, encoder=lite0_encoder)
    assert result["images_per_s_batch1"] > 0 and result["images_per_s_batch4"] > 0


def test_visual_neighbour_precision_beats_random_on_the_vendored_images(lite0_encoder):
    result = visual_neighbour_precision(FASHION_DIR, k=5, limit=24, encoder=lite0_encoder)  # shoes, watches
    assert result["images"] == 24 and result["failed"] == 0
    article = result["article_type"]
    assert article["classes"] == 2 and article["random_rate"] == pytest.approx(11 / 23, abs=1e-4)
    assert article["precision_at_5"] > 0.8


def test_index_info_describes_a_snapshot(tmp_path, capsys):
    from index.item_index import IndexConfig, ItemIndex

    index = ItemIndex(IndexConfig(dim=8, kind="flat"))
    index.upsert(["a", "b"], np.eye(8)[:2])
    index.snapshot(tmp_path)
    assert main(["index-info", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["items"] == 2 and out["kind"] == "flat" and out["config"]["dim"] == 8


def test_index_embed_reports_per_image_errors_and_exit_status(tmp_path, capsys, fashion):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    status = main(["index-embed", str(fashion[0][0]), str(bad), "--json", "--image-size", "64", "--device", "cpu"])
    out = json.loads(capsys.readouterr().out)
    assert status == 1 and out["dim"] == 1280
    assert [i["ok"] for i in out["images"]] == [True, False] and out["images"][1]["error"].startswith("empty")


def test_candidates_bench_prints_recall_per_source_and_merged(tmp_path, capsys):
    rows = [f"{u} " + " ".join(str(1 + (u + i) % 12) for i in range(6)) for u in range(1, 41)]
    (tmp_path / "sequential_data.txt").write_text("\n".join(rows) + "\n")
    assert main(["bench", "candidates", "--data", str(tmp_path), "--users", "10", "--json"]) in (0, None)
    result = json.loads(capsys.readouterr().out)
    assert set(result["recall"]) == {"covisit", "visual", "popular", "fresh", "all"}
    assert set(result["recall"]["all"]) == {"recall@20", "recall@50", "recall@100"}
    assert result["users"] == 10 and result["events"] == 40 * 4
    assert result["recall"]["covisit"]["recall@20"] == 1.0  # every user walks the same cycle of 12 items
