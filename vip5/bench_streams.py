"""`vip5 bench streams --json`: the streams worker alone under a burst of interactions.

    burst of interactions ──► embedded broker ──► vip5 streams ──► rerank-requests (read back here)

No model worker, so what it measures is the streams path's own capacity: how many re-rank requests
per second one streams worker publishes, and where an event's time goes before its request is
sent (`wait`: event time to the handler's start, i.e. queueing behind the burst; `handle`: the
handler's start to the request's time). Compare `requests_per_s` with `vip5 bench pipeline`'s
`events_per_s` and `raw_rerank_requests_per_s` to see which side caps the running system. Items
carry no image and the text encoder is off, so candidates come from co-visitation and popularity
(and the retriever, when one is published); `--streams-args` passes flags through (for example
`--batched-changelog` or `--coalesce-ms 5`). An event gets no request only while its user has
seen every item popularity knows (the first user served): `users_unreflected` counts such users.
"""

from __future__ import annotations

import argparse
import random
import shlex
import tempfile
import time
from pathlib import Path

import numpy as np

from runtime.cli import add_command


def burst(n: int, *, users: int, items: int, seed: int) -> list[tuple[str, str]]:
    """(user, item) of each interaction, seeded."""
    rng = random.Random(seed)
    return [(f"u{rng.randrange(users)}", f"i{rng.randrange(items)}") for _ in range(n)]


def run_bench_streams(args: argparse.Namespace) -> dict:
    from runtime.kafka import KafkaConfig, create_topics, producer, read_topic
    from schemas.codec import decode, encode
    from schemas.records import Interaction, RerankRequest
    from schemas.topics import INTERACTIONS, RERANK_REQUESTS, TopicConfig
    from streams.worker import READY_LINE
    from vip5.broker import BrokerConfig, EmbeddedBroker
    from vip5.processes import WorkerProcess

    with tempfile.TemporaryDirectory(prefix="vip5-bench-streams-") as tmp, \
            EmbeddedBroker(BrokerConfig(port=0, log_path=str(Path(tmp) / "broker.log"))) as broker:
        kafka = KafkaConfig(bootstrap_servers=broker.bootstrap)
        topics = TopicConfig(prefix="bench.", partitions=args.partitions)
        create_topics(kafka, topics)
        worker = WorkerProcess(["streams", "--bootstrap", broker.bootstrap, "--topic-prefix", topics.prefix,
                                "--partitions", str(args.partitions), "--data-dir", str(Path(tmp) / "faust"),
                                "--text-encoder", "none", *shlex.split(args.streams_args)],
                               log_path=Path(tmp) / "streams.log")
        with worker:
            if not worker.wait_for_log(READY_LINE, args.timeout):
                raise RuntimeError("the streams worker did not start: " + (Path(tmp) / "streams.log").read_text()[-2000:])
            time.sleep(2.0)  # partitions assigned, fetches running
            client = producer(kafka)
            started_ms = int(time.time() * 1000)
            events = burst(args.events, users=args.users, items=args.items, seed=args.seed)
            for n, (user, item) in enumerate(events):
                event = Interaction(event_id=f"b{n}", user_id=user, item_id=item, kind="click",
                                    event_time_ms=int(time.time() * 1000))
                client.send(topics.name(INTERACTIONS), key=user.encode(), value=encode(event))
            client.flush()
            client.close()
            wanted = {f"b{n}" for n in range(args.events)}
            # coalescing (--streams-args) makes fewer requests than events: stop once none came for 5 s
            messages = read_topic(kafka, topics.name(RERANK_REQUESTS), timeout_s=args.timeout,
                                  until=lambda ms: len(ms) >= args.events, idle_s=5.0)
    requests = [decode(m.value, RerankRequest) for m in messages]
    reflected = {e for r in requests for e in r.event_ids} & wanted
    # an event of a user who has seen every item known so far gets no candidates, hence no request
    unreflected_users = {events[int(e[1:])][0] for e in wanted - reflected}
    last_ms = max((r.request_time_ms for r in requests), default=started_ms)
    wait = [r.streams_received_time_ms - r.event_time_ms for r in requests]
    handle = [r.request_time_ms - r.streams_received_time_ms for r in requests]
    return {"events": args.events, "requests": len(requests), "events_reflected": len(reflected),
            "users_unreflected": len(unreflected_users),
            "seconds": round((last_ms - started_ms) / 1000, 2),
            "requests_per_s": round(len(requests) / max((last_ms - started_ms) / 1000, 1e-3), 1),
            "events_per_s": round(len(reflected) / max((last_ms - started_ms) / 1000, 1e-3), 1),
            "stages": {name: {"p50_ms": float(np.percentile(v, 50)), "p99_ms": float(np.percentile(v, 99))}
                       for name, v in (("wait", wait), ("handle", handle)) if v},
            "streams_args": args.streams_args}


def register(commands, bench) -> None:
    del commands
    p = add_command(bench, "streams", run_bench_streams,
                    "the streams worker alone under a burst: re-rank requests per second and where the time goes")
    p.add_argument("--events", type=int, default=3000, help="interactions in the burst")
    p.add_argument("--users", type=int, default=300)
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--partitions", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=180.0, help="longest wait for start-up and for the requests")
    p.add_argument("--streams-args", default="", metavar="ARGS", help="extra `vip5 streams` flags, one string")
