"""A recommendation's stamps become per-stage durations; older records give what they can."""

from types import SimpleNamespace

from vip5.latency import STAGE_NAMES, stages_of, summarize


def stamped(**times):
    base = dict(event_time_ms=100, streams_received_time_ms=110, request_time_ms=112, model_received_time_ms=120,
                batch_start_time_ms=121, scored_time_ms=150, publish_time_ms=151)
    return SimpleNamespace(**{**base, **times})


def test_every_stage_is_the_time_between_its_two_stamps():
    stages = stages_of(stamped(), delivered_ms=160)
    assert stages == {"to_streams": 10, "streams": 2, "to_model": 8, "queue": 1, "score": 29, "publish": 1,
                      "to_subscriber": 9, "freshness": 51, "delivered": 60}
    assert sum(stages[name] for name in STAGE_NAMES) == stages["delivered"]


def test_a_record_without_stage_times_gives_freshness_only():
    stages = stages_of(stamped(streams_received_time_ms=None, model_received_time_ms=None, batch_start_time_ms=None,
                               scored_time_ms=None))
    assert stages == {"freshness": 51}


def test_summary_lists_stages_in_pipeline_order_with_p50_and_p99():
    summary = summarize([stages_of(stamped(scored_time_ms=121 + k), delivered_ms=200) for k in range(100)])
    assert list(summary)[:3] == ["to_streams", "streams", "to_model"]
    assert summary["score"]["p50_ms"] == 49.5 and summary["score"]["p99_ms"] == 98.0
