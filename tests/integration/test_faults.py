"""Crashes do not lose interactions: kill -9 of either worker, or of the broker, under load; then
every interaction is reflected in a recommendation and every repeat is recognisable by its
request id."""

import pytest

from vip5.bench_faults import run_faults
from vip5.bench_pipeline import build_bench_model
from vip5.demo_world import load_catalogue
from vip5.stack import StackConfig

# Slow (about 2 minutes each) and outside the default run: `make test-all` runs them.
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _stack(tmp_path, **changes) -> tuple[StackConfig, list]:
    catalogue = load_catalogue()[:30]
    model_dir = build_bench_model(tmp_path / "model", preset="tiny", item_ids=[p.item_id for p in catalogue],
                                  user_ids=[f"user{n}" for n in range(10)], feature_dim=1280)
    cfg = StackConfig(work_dir=tmp_path, model_dir=model_dir, topic_prefix="faults.", partitions=2, image_size=96,
                      candidates=8, **changes)
    return cfg, catalogue


def _assert_nothing_lost(result: dict) -> None:
    assert result["lost"] == 0, result["lost_event_ids"]
    assert result["duplicates_with_different_events"] == 0
    assert result["recommendations_out"] >= result["events_in"]


def test_killing_workers_under_load_loses_nothing(tmp_path):
    cfg, catalogue = _stack(tmp_path)
    result = run_faults(cfg, catalogue, rate=4.0, duration_s=30.0, kills=1, users=10, seed=1, drain_s=120)
    assert result["kills"] == 2 and result["events_in"] >= 100
    _assert_nothing_lost(result)


def test_killing_the_broker_under_load_loses_nothing_and_workers_reconnect(tmp_path):
    cfg, catalogue = _stack(tmp_path, durable_broker=True)
    result = run_faults(cfg, catalogue, rate=4.0, duration_s=30.0, kills=0, broker_kills=2, broker_down_s=2.0,
                        users=10, seed=2, drain_s=120)
    assert result["broker_kills"] == 2 and result["events_in"] >= 100
    _assert_nothing_lost(result)
