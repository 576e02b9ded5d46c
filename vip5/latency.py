"""Where an event's time goes: the stage times a Recommendation carries, as per-stage durations.

    stages_of(Recommendation, delivered_ms) -> {stage: ms}   stages whose two ends are stamped
    summarize([{stage: ms}, ...]) -> {stage: {"p50_ms", "p99_ms"}}

Stages, in order (each from one stamp to the next; the clocks are those of one machine's workers):

    to_streams     event_time_ms            -> streams_received_time_ms  producer, broker, faust fetch
    streams        streams_received_time_ms -> request_time_ms           history, candidates, request
    to_model       request_time_ms          -> model_received_time_ms    faust send, broker, model poll
    queue          model_received_time_ms   -> batch_start_time_ms       waiting for the scoring thread
    score          batch_start_time_ms      -> scored_time_ms            decode, features, VIP5 ranking
    publish        scored_time_ms           -> publish_time_ms           records built (explanations later)
    to_subscriber  publish_time_ms          -> delivered                 send, flush, broker, subscriber poll

freshness = publish_time_ms - event_time_ms (what the demo prints); delivered adds to_subscriber.
Records from before these stamps existed (schema v1) give only the stages they can.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

STAGES = (
    ("to_streams", "event_time_ms", "streams_received_time_ms"),
    ("streams", "streams_received_time_ms", "request_time_ms"),
    ("to_model", "request_time_ms", "model_received_time_ms"),
    ("queue", "model_received_time_ms", "batch_start_time_ms"),
    ("score", "batch_start_time_ms", "scored_time_ms"),
    ("publish", "scored_time_ms", "publish_time_ms"),
    ("to_subscriber", "publish_time_ms", "delivered"),
)
STAGE_NAMES = tuple(name for name, _, _ in STAGES)


def stages_of(rec, delivered_ms: int | None = None) -> dict[str, int]:
    """Milliseconds per stage of one recommendation; `freshness` and (given delivered_ms) `delivered`."""
    stamps = {start: getattr(rec, start, None) for _, start, _ in STAGES}
    stamps["delivered"] = delivered_ms
    out = {name: stamps[end] - stamps[start] for name, start, end in STAGES
           if stamps[start] is not None and stamps[end] is not None}
    out["freshness"] = rec.publish_time_ms - rec.event_time_ms
    if delivered_ms is not None:
        out["delivered"] = delivered_ms - rec.event_time_ms
    return out


def summarize(samples: Iterable[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Per stage (in pipeline order, then freshness and delivered): p50 and p99 in ms."""
    by_stage: dict[str, list[float]] = {}
    for sample in samples:
        for name, ms in sample.items():
            by_stage.setdefault(name, []).append(ms)
    order = [*STAGE_NAMES, "freshness", "delivered"]
    return {name: {"p50_ms": round(float(np.percentile(by_stage[name], 50)), 1),
                   "p99_ms": round(float(np.percentile(by_stage[name], 99)), 1)}
            for name in order if by_stage.get(name)}
