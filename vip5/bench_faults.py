"""`vip5 bench faults --json`: kill -9 the workers under a steady load and count what was lost.

One run on the embedded broker: a steady stream of interactions at `--rate` for `--duration-s`;
meanwhile the streams worker and the model worker are each SIGKILLed `--kills` times at seeded
random moments and restarted at once; with `--broker-kills N` the broker (on durable storage in a
local S3 store) is SIGKILLed N times too and comes back after `--broker-down-s`, while the workers
keep running and must reconnect by themselves. Afterwards every interaction must be reflected in some
recommendation (`lost` counts those that are not) and repeats must be recognisable: a repeated
`request_id` carries the same interactions (`duplicates` counts repeated recommendations).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from pathlib import Path

from runtime.cli import add_command


def _load(stack, catalogue, *, rate: float, duration_s: float, users: int, sent: list, stop: threading.Event) -> None:
    from schemas.codec import encode
    from schemas.records import Interaction
    from schemas.topics import INTERACTIONS

    rng, start, n = random.Random(3), time.monotonic(), 0
    while time.monotonic() - start < duration_s and not stop.is_set():
        event = Interaction(event_id=f"f{n}", user_id=f"user{n % users}", item_id=rng.choice(catalogue).item_id,
                            kind="click", event_time_ms=int(time.time() * 1000))
        ack = stack.send(INTERACTIONS, event.user_id, encode(event))
        stack.flush()
        if ack.succeeded():  # only acknowledged events count (a send can fail while the broker is down)
            sent.append(event.event_id)
        n += 1
        time.sleep(max(0.0, start + n / rate - time.monotonic()))


def _events_in(stack, spec, record) -> set[str]:
    """Every interaction id the records of one topic reflect."""
    from runtime.kafka import read_topic
    from schemas.codec import decode

    messages = read_topic(stack.kafka, stack.topics.name(spec), timeout_s=60, idle_s=3)
    return {e for m in messages for e in decode(m.value, record).event_ids}


def _where_lost(stack, lost: list[str]) -> dict:
    """Which stage dropped each lost interaction: never became a re-rank request (streams worker),
    a request never answered (model worker), or answered but not seen by the subscriber."""
    from runtime.kafka import read_topic
    from schemas.codec import decode
    from schemas.records import Interaction, Recommendation, RerankRequest
    from schemas.topics import INTERACTIONS, RECOMMENDATIONS, RERANK_REQUESTS

    if not lost:
        return {}
    requested = _events_in(stack, RERANK_REQUESTS, RerankRequest)
    answered = _events_in(stack, RECOMMENDATIONS, Recommendation)
    at = {decode(m.value, Interaction).event_id: f"{m.topic}[{m.partition}]@{m.offset}"
          for m in read_topic(stack.kafka, stack.topics.name(INTERACTIONS), timeout_s=60, idle_s=3)}
    return {"streams": [f"{e} ({at.get(e)})" for e in lost if e not in requested],
            "model-worker": [e for e in lost if e in requested and e not in answered],
            "subscriber": [e for e in lost if e in answered]}


def _crash(stack, name: str, broker_down_s: float) -> None:
    """SIGKILL one part of the stack and bring it back."""
    if name == "broker":
        stack.restart_broker(kill=True, down_s=broker_down_s)
    else:
        stack.restart(name, kill=True)
        stack.wait_ready([name])


def run_faults(stack_cfg, catalogue, *, rate: float, duration_s: float, kills: int, users: int, seed: int,
               drain_s: float, broker_kills: int = 0, broker_down_s: float = 2.0) -> dict:
    from vip5.stack import LocalStack
    from vip5.subscribe import recommendations

    recs, sent, stop = [], [], threading.Event()
    with LocalStack(stack_cfg) as stack:
        stack.publish_products(catalogue, wait_s=180)
        def collect():
            for rec in recommendations(stack.kafka, stack.topics, group_id="faults", stop=stop):
                recs.append(rec)

        collector = threading.Thread(target=collect, daemon=True)
        collector.start()
        load = threading.Thread(target=_load, args=(stack, catalogue), kwargs=dict(
            rate=rate, duration_s=duration_s, users=users, sent=sent, stop=threading.Event()), daemon=True)
        load.start()
        rng = random.Random(seed)
        victims = ["streams", "model-worker"] * kills + ["broker"] * broker_kills
        plan = sorted((rng.uniform(0.1, 0.8) * duration_s, name) for name in victims)
        started, recovery_s = time.monotonic(), []
        for at, name in plan:
            time.sleep(max(0.0, started + at - time.monotonic()))
            killed = time.monotonic()
            _crash(stack, name, broker_down_s)
            recovery_s.append(time.monotonic() - killed)
        load.join()
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline and not set(sent) <= {e for r in list(recs) for e in r.event_ids}:
            time.sleep(0.5)
        stop.set()
        collector.join(timeout=10)
        reflected = {e for r in recs for e in r.event_ids}
        lost_at = _where_lost(stack, sorted(set(sent) - reflected))
    by_id: dict[str, tuple] = {}
    inconsistent = 0
    for r in recs:
        inconsistent += by_id.setdefault(r.request_id, r.event_ids) != r.event_ids
    lost = sorted(set(sent) - reflected)
    return {"kills": len(plan), "broker_kills": broker_kills, "events_in": len(sent), "recommendations_out": len(recs),
            "lost": len(lost), "lost_event_ids": lost[:20], "duplicates": len(recs) - len(by_id),
            "duplicates_with_different_events": inconsistent,
            "recovery_s_max": round(max(recovery_s, default=0.0), 2),
            "recovery_s_mean": round(sum(recovery_s) / max(1, len(recovery_s)), 2), "lost_at": lost_at}


def run_bench_faults(args: argparse.Namespace) -> dict:
    from vip5.bench_pipeline import build_bench_model
    from vip5.demo_world import load_catalogue
    from vip5.stack import StackConfig

    catalogue = load_catalogue()[: args.items]
    with tempfile.TemporaryDirectory(prefix="vip5-faults-") as tmp:
        work = Path(args.work_dir or tmp)
        model_dir = build_bench_model(work / "model", preset="tiny", item_ids=[p.item_id for p in catalogue],
                                      user_ids=[f"user{n}" for n in range(args.users)], feature_dim=1280)
        stack_cfg = StackConfig(work_dir=work, model_dir=model_dir, topic_prefix="faults.", partitions=3,
                                image_size=96, candidates=10, durable_broker=args.broker_kills > 0)
        return run_faults(stack_cfg, catalogue, rate=args.rate, duration_s=args.duration_s, kills=args.kills,
                          users=args.users, seed=args.seed, drain_s=args.drain_s, broker_kills=args.broker_kills,
                          broker_down_s=args.broker_down_s)


def register(commands, bench) -> None:
    p = add_command(bench, "faults", run_bench_faults,
                    "kill -9 the workers under load; count lost interactions and repeated recommendations")
    p.add_argument("--rate", type=float, default=5.0, help="interactions per second")
    p.add_argument("--duration-s", type=float, default=90.0)
    p.add_argument("--kills", type=int, default=2, help="kills per worker")
    p.add_argument("--broker-kills", type=int, default=0,
                   help="kills of the broker (runs it on durable storage in a local S3 store; needs moto)")
    p.add_argument("--broker-down-s", type=float, default=2.0, help="how long the broker stays down per kill")
    p.add_argument("--users", type=int, default=30)
    p.add_argument("--items", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default=None, help="keep worker logs here (default: a temporary folder)")
    p.add_argument("--drain-s", type=float, default=180.0, help="how long to wait for the backlog afterwards")
