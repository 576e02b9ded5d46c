"""`vip5 subscribe`: how a client application consumes the recommendations topic.

    recommendations (Recommendation, key user_id) ──► your callback, one record at a time

A subscriber is a plain consumer group: run several with the same `--group` to share the
partitions, or give each application its own group to receive everything. Records repeat after
a crash (at-least-once); `request_id` identifies a repeat.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable, Iterator

from runtime.cli import add_command, add_kafka_args, kafka_config, topic_config
from runtime.kafka import KafkaConfig, consumer
from schemas.codec import decode
from schemas.errors import SchemaError
from schemas.records import Recommendation
from schemas.topics import RECOMMENDATIONS, TopicConfig


def recommendations(cfg: KafkaConfig, topics: TopicConfig, *, group_id: str, stop: threading.Event,
                    users: set[str] | None = None, poll_ms: int = 200) -> Iterator[Recommendation]:
    """Recommendations as they arrive (for `users` only, if given), until `stop` is set."""
    client = consumer(cfg, group_id, [topics.name(RECOMMENDATIONS)], enable_auto_commit=True)
    try:
        while not stop.is_set():
            for records in client.poll(timeout_ms=poll_ms).values():
                for message in records:
                    try:
                        rec = decode(message.value, Recommendation)
                    except SchemaError:
                        continue  # not ours to dead-letter: the producer validated it
                    if users is None or rec.user_id in users:
                        yield rec
    finally:
        client.close()


def describe(rec: Recommendation, *, titles: Callable[[str], str] = str, top: int = 3) -> str:
    """One human-readable line for a recommendation."""
    freshness_ms = rec.publish_time_ms - rec.event_time_ms
    items = ", ".join(f"{titles(i.item_id)} ({i.score:.2f})" for i in rec.items[:top])
    line = f"{rec.user_id} <- {items}  [{freshness_ms} ms, adapter {rec.adapter_version}]"
    if rec.items and rec.items[0].explanation:
        line += f'  why: "{rec.items[0].explanation}"'
    return line


def run_subscribe(args: argparse.Namespace) -> dict:
    import json
    import signal

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    users = set(args.user) if args.user else None
    count = 0
    for rec in recommendations(kafka_config(args), topic_config(args), group_id=args.group, stop=stop, users=users):
        if args.json:
            print(json.dumps({"request_id": rec.request_id, "user_id": rec.user_id,
                              "items": [[i.item_id, i.score] for i in rec.items],
                              "adapter_version": rec.adapter_version,
                              "freshness_ms": rec.publish_time_ms - rec.event_time_ms}), flush=True)
        else:
            print(describe(rec), flush=True)
        count += 1
        if args.limit and count >= args.limit:
            break
    return {}


def register(commands, bench) -> None:
    p = add_command(commands, "subscribe", run_subscribe,
                    "print recommendations as they arrive (--json: one JSON object per line)")
    add_kafka_args(p)
    p.add_argument("--group", default="vip5-subscriber", help="consumer group of this subscriber")
    p.add_argument("--user", action="append", help="only this user (repeatable)")
    p.add_argument("--limit", type=int, default=0, help="stop after this many (0: until SIGINT)")
