"""How a package contributes `vip5` subcommands, and the flags every Kafka command shares.

Each package that offers commands has a `cli.py` with `register(commands, bench)` that calls
`add_command` for each subcommand; the top (`vip5.cli`) collects them. A handler returns a dict
(the result, with an optional "exit_status") and imports heavy modules lazily so `vip5 --help`
stays fast. Only this CLI code reads the environment (VIP5_KAFKA_*, VIP5_TOPIC_PREFIX, ...).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from runtime import logs

Handler = Callable[[argparse.Namespace], dict]


def add_command(commands, name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
    """Add a subcommand whose handler returns a result dict; gives it the shared flags."""
    parser = commands.add_parser(name, help=help, description=help)
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    parser.add_argument("--log-format", choices=logs.LOG_FORMATS, default=os.environ.get("VIP5_LOG_FORMAT", "text"),
                        help="stderr log lines as text or one JSON object each (env VIP5_LOG_FORMAT)")
    parser.set_defaults(handler=handler)
    return parser


def add_kafka_args(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every command that talks to Kafka (env: VIP5_KAFKA_*, VIP5_TOPIC_PREFIX)."""
    parser.add_argument("--bootstrap", default=None, help="host:port[,host:port] (env VIP5_KAFKA_BOOTSTRAP_SERVERS)")
    parser.add_argument("--topic-prefix", default=None, help="topic name prefix (env VIP5_TOPIC_PREFIX, default vip5.)")
    parser.add_argument("--partitions", type=int, default=None, help="partitions per topic (env VIP5_PARTITIONS)")


def add_metrics_args(parser: argparse.ArgumentParser) -> None:
    """--metrics-port / --metrics-host of a worker's /metrics, /healthz, /readyz server (runtime.metrics)."""
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve /metrics, /healthz, /readyz on this port (off by default)")
    parser.add_argument("--metrics-host", default="127.0.0.1", help="address of the metrics server")


def kafka_config(args: argparse.Namespace):
    from runtime.kafka import KafkaConfig

    return KafkaConfig.from_env(bootstrap_servers=args.bootstrap)


def topic_config(args: argparse.Namespace):
    from schemas.topics import TopicConfig

    prefix = args.topic_prefix if args.topic_prefix is not None else os.environ.get("VIP5_TOPIC_PREFIX", "vip5.")
    partitions = args.partitions or int(os.environ.get("VIP5_PARTITIONS", "6"))
    return TopicConfig(prefix=prefix, partitions=partitions)
