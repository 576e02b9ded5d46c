"""The run report draws every plot from what a run collected: a short demo-like run's recommendations,
fed through the demo's own Tally, give a page whose every PNG is drawn (not empty, not one colour)."""

import argparse
import importlib
import random
import time

import numpy as np
import pytest
from PIL import Image

from schemas.records import RankedItem, Recommendation
from vip5.demo import Tally, demo_report
from vip5.demo_world import load_catalogue, simulate_users
from vip5.report import ReportData, ServedRecommendation, shown_recommendations, write_report

T0_MS = 1_700_000_000_000


def assert_drawn(png) -> None:
    """A real plot: a PNG of a few KB whose pixels are not all one colour."""
    assert png.exists() and png.stat().st_size > 4_000, png
    with Image.open(png) as image:
        assert np.asarray(image.convert("L"), dtype=np.float32).std() > 5, png


def _recommendation(n: int, t0_ms: int, rng: random.Random, user_id: str, items: list[str],
                    adapter_version: str) -> Recommendation:
    event_ms = t0_ms + 250 * n  # 4 events/s, as the demo publishes them
    fresh_ms = int(120 + rng.expovariate(1 / 60) + (500 if n % 25 == 7 else 0))  # a tail and a few slow ones
    return Recommendation(
        request_id=f"r{n}", user_id=user_id, items=tuple(RankedItem(item_id=i, score=1.0 - k / 10)
                                                         for k, i in enumerate(items)),
        model_version="demo", adapter_version=adapter_version, event_ids=(f"demo-{user_id}-{n}",),
        event_time_ms=event_ms, request_time_ms=event_ms + 30, streams_received_time_ms=event_ms + 10,
        model_received_time_ms=event_ms + 45, batch_start_time_ms=event_ms + 50,
        scored_time_ms=event_ms + fresh_ms - 5, publish_time_ms=event_ms + fresh_ms)


def short_demo_run(n_recs: int = 60):
    """A demo-sized run without a broker: the demo's world and Tally, recommendations with every stage
    stamp, adapter v1 swapped for v2 halfway (as the demo's trainer does)."""
    catalogue = load_catalogue()
    shoppers = simulate_users(catalogue, 6, seed=7)
    tally, rng = Tally(catalogue, shoppers), random.Random(0)
    t0_ms = int(time.time() * 1000) - 250 * n_recs - 1000  # ends just now: Tally stamps delivery with the clock
    for n in range(n_recs):
        shopper = shoppers[n % len(shoppers)]
        liked = [p.item_id for p in catalogue if p.article_type in shopper.likes]
        items = rng.sample(liked, 3) + rng.sample([p.item_id for p in catalogue], 7)
        tally.add(_recommendation(n, t0_ms, rng, shopper.user_id, items, "v1" if n < n_recs // 2 else "v2"))
    summary = {"recommendations_out": tally.recs, "top1_in_liked_types": round(tally.top_liked / tally.recs, 3),
               "liked_share_of_catalogue": 0.12, "recommendations_by_adapter_version": tally.adapter_versions}
    return tally, summary, (catalogue, shoppers)


def test_a_short_demo_run_renders_every_plot_drawn_and_shown_on_the_page(tmp_path):
    tally, summary, world = short_demo_run()
    files = write_report(demo_report(tally, summary, world), tmp_path / "report")
    assert set(files.plots) == {"freshness", "freshness_histogram", "adapter_versions", "quality",
                                "stage_latency", "recommendations"}
    page = files.index.read_text()
    for png in files.plots.values():
        assert_drawn(png)
        assert f'src="{png.name}"' in page
    assert "No quality figure" not in page and "top1_in_liked_types" in page


def test_a_run_without_a_quality_figure_says_so_and_still_draws_the_rest(tmp_path):
    recs = [ServedRecommendation(user_id=f"u{n % 3}", item_ids=("a", "b"), adapter_version="v1",
                                 event_time_ms=T0_MS + 100 * n, publish_time_ms=T0_MS + 100 * n + 50 + n)
            for n in range(30)]  # no stage stamps, items without photos
    files = write_report(ReportData(title="bench", recommendations=recs, no_quality_reason="random weights"),
                         tmp_path)
    assert set(files.plots) == {"freshness", "freshness_histogram", "adapter_versions", "recommendations"}
    assert "No quality figure: random weights." in files.index.read_text()
    for png in files.plots.values():
        assert_drawn(png)


def test_a_run_that_received_nothing_still_writes_a_page(tmp_path):
    files = write_report(ReportData(title="empty", recommendations=[]), tmp_path)
    assert files.index.exists() and all(png.exists() for png in files.plots.values())


def test_the_photos_show_the_latest_recommendation_of_distinct_users():
    recs = [ServedRecommendation(user_id=u, item_ids=("a",), adapter_version="v1", event_time_ms=t,
                                 publish_time_ms=t + 1) for t, u in enumerate(["u1", "u2", "u1", "u3", "u1"])]
    shown = shown_recommendations(recs, limit=2)
    assert [(r.user_id, r.event_time_ms) for r in shown] == [("u1", 4), ("u3", 3)]


@pytest.mark.parametrize("module, argv", [
    ("vip5.demo", ["demo"]),
    ("vip5.bench_pipeline", ["bench", "pipeline"]),
    ("vip5.bench_replay", ["bench", "replay", "--data", "d", "--model-dir", "m"]),
])
def test_the_demo_and_the_benches_take_a_report_directory(module, argv):
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command")
    bench = commands.add_parser("bench").add_subparsers(dest="bench")
    importlib.import_module(module).register(commands, bench)
    assert parser.parse_args([*argv, "--report", "out"]).report == "out"
    assert parser.parse_args(argv).report is None
