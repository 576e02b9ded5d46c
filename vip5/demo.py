"""`vip5 demo`: the embedded demo.

Starts the embedded broker, creates the topics, publishes a stream of user interactions and
reads them back through a consumer group, then prints a summary and shuts everything down.
"""

from __future__ import annotations

import argparse
import logging
import random
import time

from vip5.cli import add_command

log = logging.getLogger(__name__)


def run_demo(args: argparse.Namespace) -> dict:
    from schemas.codec import decode, encode
    from schemas.records import Interaction
    from schemas.topics import INTERACTIONS, TopicConfig
    from vip5.broker import BrokerConfig, EmbeddedBroker
    from vip5.kafka import KafkaConfig, consumer, create_topics, producer

    rng = random.Random(args.seed)
    started = time.monotonic()
    with EmbeddedBroker(BrokerConfig(port=0)) as broker:
        cfg = KafkaConfig(bootstrap_servers=broker.bootstrap, session_timeout_ms=3000, heartbeat_interval_ms=500)
        topics = TopicConfig(partitions=3)
        create_topics(cfg, topics)
        out = producer(cfg)
        now = int(time.time() * 1000)
        for i in range(args.events):
            event = Interaction(event_id=f"demo-{i}", user_id=f"user-{rng.randrange(20)}",
                                item_id=f"item-{rng.randrange(200)}", kind="click", event_time_ms=now + i)
            out.send(topics.name(INTERACTIONS), key=event.user_id.encode(), value=encode(event))
        out.flush()
        out.close()
        reader = consumer(cfg, "vip5-demo", [topics.name(INTERACTIONS)])
        received, deadline = 0, time.monotonic() + 60
        while received < args.events and time.monotonic() < deadline:
            for records in reader.poll(timeout_ms=500).values():
                received += sum(1 for r in records if decode(r.value, Interaction))
        reader.commit()
        reader.close()
    return {"events_in": args.events, "events_read_back": received,
            "elapsed_s": round(time.monotonic() - started, 2)}


def register(commands, bench) -> None:
    p = add_command(commands, "demo", run_demo, "run the embedded demo end to end and print a summary")
    p.add_argument("--events", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
