"""`vip5 subscribe`: how a client application consumes the recommendations and explanations topics.

    recommendations (Recommendation, key user_id) ──► your callback, one record at a time
    explanations (Explanation, key user_id)       ──► the same, shortly after the recommendation
                                                      it explains (model workers run with --explain)

An explanation names its recommendation's `request_id` and top item; it is published after that
recommendation is acknowledged, but the two topics are read independently, so a client that pairs
them matches by `request_id` rather than by arrival order. A subscriber is a plain consumer
group: run several with the same `--group` to share the partitions, or give each application its
own group to receive everything. Records repeat after a crash (at-least-once); `request_id`
identifies a repeat.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable, Iterator, Sequence

from runtime.cli import add_command, add_kafka_args, kafka_config, topic_config
from runtime.kafka import KafkaConfig, consumer
from schemas.codec import decode
from schemas.errors import SchemaError
from schemas.records import Explanation, Recommendation, Record
from schemas.topics import EXPLANATIONS, RECOMMENDATIONS, TopicConfig, TopicSpec


def follow(cfg: KafkaConfig, topics: TopicConfig, specs: Sequence[TopicSpec], *, group_id: str,
           stop: threading.Event, users: set[str] | None = None, poll_ms: int = 200) -> Iterator[Record]:
    """Records of the `specs` topics (all keyed by user) as they arrive, for `users` only if given,
    until `stop` is set."""
    record_of = {topics.name(spec): spec.record for spec in specs}
    client = consumer(cfg, group_id, list(record_of), enable_auto_commit=True)
    try:
        while not stop.is_set():
            for messages in client.poll(timeout_ms=poll_ms).values():
                for message in messages:
                    try:
                        record = decode(message.value, record_of[message.topic])
                    except SchemaError:
                        continue  # not ours to dead-letter: the producer validated it
                    if users is None or record.user_id in users:
                        yield record
    finally:
        client.close()


def recommendations(cfg: KafkaConfig, topics: TopicConfig, *, group_id: str, stop: threading.Event,
                    users: set[str] | None = None, poll_ms: int = 200) -> Iterator[Recommendation]:
    """Recommendations as they arrive (for `users` only, if given), until `stop` is set."""
    return follow(cfg, topics, (RECOMMENDATIONS,), group_id=group_id, stop=stop, users=users, poll_ms=poll_ms)


def describe(rec: Recommendation, *, titles: Callable[[str], str] = str, top: int = 3) -> str:
    """One human-readable line for a recommendation."""
    freshness_ms = rec.publish_time_ms - rec.event_time_ms
    items = ", ".join(f"{titles(i.item_id)} ({i.score:.2f})" for i in rec.items[:top])
    return f"{rec.user_id} <- {items}  [{freshness_ms} ms, adapter {rec.adapter_version}]"


def describe_explanation(explanation: Explanation, *, titles: Callable[[str], str] = str) -> str:
    """One human-readable line for an explanation of a recommendation's top item."""
    freshness_ms = explanation.publish_time_ms - explanation.event_time_ms
    return (f'{explanation.user_id} why {titles(explanation.item_id)}: "{explanation.text}"  '
            f"[{freshness_ms} ms, request {explanation.request_id}]")


def as_json(record: Recommendation | Explanation) -> dict:
    """What `vip5 subscribe --json` prints per record: an explanation has `explanation`, not `items`."""
    if isinstance(record, Explanation):
        return {"request_id": record.request_id, "user_id": record.user_id, "item_id": record.item_id,
                "explanation": record.text, "adapter_version": record.adapter_version,
                "freshness_ms": record.publish_time_ms - record.event_time_ms}
    return {"request_id": record.request_id, "user_id": record.user_id,
            "items": [[i.item_id, i.score] for i in record.items], "adapter_version": record.adapter_version,
            "freshness_ms": record.publish_time_ms - record.event_time_ms}


def run_subscribe(args: argparse.Namespace) -> dict:
    import json
    import signal

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    users = set(args.user) if args.user else None
    specs = (RECOMMENDATIONS,) if args.no_explanations else (RECOMMENDATIONS, EXPLANATIONS)
    count = 0
    for record in follow(kafka_config(args), topic_config(args), specs, group_id=args.group, stop=stop,
                         users=users):
        if args.json:
            print(json.dumps(as_json(record)), flush=True)
        elif isinstance(record, Explanation):
            print(describe_explanation(record), flush=True)
        else:
            print(describe(record), flush=True)
        count += isinstance(record, Recommendation)
        if args.limit and count >= args.limit:
            break
    return {}


def register(commands, bench) -> None:
    p = add_command(commands, "subscribe", run_subscribe,
                    "print recommendations and their explanations as they arrive (--json: one JSON object per line)")
    add_kafka_args(p)
    p.add_argument("--group", default="vip5-subscriber", help="consumer group of this subscriber")
    p.add_argument("--user", action="append", help="only this user (repeatable)")
    p.add_argument("--no-explanations", action="store_true", help="read the recommendations topic only")
    p.add_argument("--limit", type=int, default=0, help="stop after this many recommendations (0: until SIGINT)")
