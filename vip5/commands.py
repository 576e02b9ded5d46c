"""Infrastructure subcommands: `vip5 broker`, `vip5 topics create|list`."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from runtime.cli import add_command, add_kafka_args, kafka_config, topic_config


def run_broker(args: argparse.Namespace) -> dict:
    from vip5.broker import BrokerConfig, EmbeddedBroker

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    config = BrokerConfig(host=args.host, port=args.port, log_path=args.log, storage_url=args.storage_url)
    with EmbeddedBroker(config) as broker:
        ready = {"bootstrap": broker.bootstrap, "storage": broker.config.storage_url}
        print(json.dumps(ready) if args.json else f"broker ready on {broker.bootstrap}", flush=True)
        while not stop.wait(0.5):
            if broker.process is None or broker.process.poll() is not None:
                print("broker exited unexpectedly", file=sys.stderr)
                return {"exit_status": 1}
    return {}


def run_topics_create(args: argparse.Namespace) -> dict:
    from runtime.kafka import create_topics

    return {"topics": create_topics(kafka_config(args), topic_config(args))}


def run_topics_list(args: argparse.Namespace) -> dict:
    from schemas.topics import ALL_TOPICS

    topics = topic_config(args)
    return {"topics": {topics.name(s): {"record": s.record.SCHEMA, "version": s.record.VERSION,
                                        "key": s.key, "partitions": topics.partitions_of(s),
                                        "cleanup_policy": s.cleanup_policy, "description": s.description}
                       for s in ALL_TOPICS}}


def register(commands, bench) -> None:
    p = add_command(commands, "broker", run_broker,
                    "run the embedded Kafka-protocol broker (Tansu) until SIGINT/SIGTERM")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9092, help="0 picks a free port")
    p.add_argument("--log", default=None, help="file for the broker's own log")
    p.add_argument("--storage-url", default="memory://tansu/",
                   help="memory://tansu/ (lost on exit) or s3://BUCKET/ (durable; needs AWS_ENDPOINT, "
                        "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and, for http, AWS_ALLOW_HTTP=true)")

    topics = commands.add_parser("topics", help="create or list the topics of the registry")
    sub = topics.add_subparsers(dest="topics_command", metavar="ACTION", required=True)
    create = add_command(sub, "create", run_topics_create, "create every topic (idempotent)")
    add_kafka_args(create)
    listing = add_command(sub, "list", run_topics_list, "show the topic registry")
    add_kafka_args(listing)
