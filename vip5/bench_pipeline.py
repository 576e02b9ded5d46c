"""`vip5 bench pipeline --json`: what the streaming costs on top of the model.

Side by side in one run, on the same model and candidate count:
  raw      VIP5Ranker.rank in-process on ready-made requests      -> requests/s
  pipeline interactions published as fast as possible through the whole system (broker, streams
           worker, model worker) until every one is reflected     -> events/s, freshness
throughput_ratio = pipeline events/s / raw requests/s (1.0 would mean streaming costs nothing).
The model has random weights: cost does not depend on what it learned.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from runtime.cli import add_command


def build_bench_model(path: Path, *, preset: str, item_ids: list[str], user_ids: list[str], feature_dim: int) -> Path:
    from model_worker.vip5model.config import VIP5Config
    from model_worker.vip5model.model import VIP5Model
    from model_worker.vip5model.tokenizer import build_template_tokenizer

    tokenizer = build_template_tokenizer(item_ids + user_ids)
    VIP5Model.build(VIP5Config(backbone=preset, image_feature_dim=feature_dim), tokenizer, seed=0).save_pretrained(path)
    return path


def raw_rerank_rate(model_dir: Path, item_ids: list[str], *, candidates: int, batch: int, requests: int,
                    prompt_history_len: int, feature_dim: int) -> float:
    """Requests/s of the ranker alone, batches of `batch` as the model worker forms them."""
    from model_worker.ranker import RankerConfig, VIP5Ranker
    from model_worker.rerank import RerankConfig
    from schemas.records import Candidate, RerankRequest

    ranker = VIP5Ranker.load(RankerConfig(model_dir=str(model_dir), rerank=RerankConfig(history_len=prompt_history_len)))
    rng = np.random.default_rng(0)
    features = {i: rng.random(feature_dim, dtype=np.float32) for i in item_ids}
    pick = random.Random(0)
    reqs = [RerankRequest(request_id=f"r{n}", user_id=f"user{n % 50}", history=pick.sample(item_ids, 8),
                          candidates=[Candidate(item_id=i, score=0.0, source="visual")
                                      for i in pick.sample(item_ids, candidates)],
                          event_ids=[f"e{n}"], event_time_ms=0, request_time_ms=0) for n in range(requests)]
    ranker.rank(reqs[:batch], features)  # warm-up
    start = time.perf_counter()
    for lo in range(0, len(reqs), batch):
        ranker.rank(reqs[lo: lo + batch], features)
    return len(reqs) / (time.perf_counter() - start)


def pipeline_rate(stack_cfg, catalogue, *, events: int, users: int, timeout_s: float) -> dict:
    from schemas.codec import encode
    from schemas.records import Interaction
    from schemas.topics import INTERACTIONS
    from vip5.stack import LocalStack
    from vip5.subscribe import recommendations

    seen, freshness, stop = set(), [], threading.Event()
    with LocalStack(stack_cfg) as stack:
        stack.publish_products(catalogue, wait_s=timeout_s)

        def collect():
            for rec in recommendations(stack.kafka, stack.topics, group_id="bench", stop=stop):
                seen.update(rec.event_ids)
                freshness.append(rec.publish_time_ms - rec.event_time_ms)

        collector = threading.Thread(target=collect, daemon=True)
        collector.start()
        time.sleep(2 * stack.kafka.session_timeout_ms / 1000)  # the collector joins its group
        rng = random.Random(1)
        start = time.time()
        for n in range(events):
            event = Interaction(event_id=f"b{n}", user_id=f"user{n % users}", item_id=rng.choice(catalogue).item_id,
                                kind="click", event_time_ms=int(time.time() * 1000))
            stack.send(INTERACTIONS, event.user_id, encode(event))
        stack.flush()
        deadline = time.time() + timeout_s
        while len(seen) < events and time.time() < deadline:
            time.sleep(0.2)
        elapsed = time.time() - start
        stop.set()
        collector.join(timeout=10)
    fresh = np.asarray(freshness or [0.0])
    return {"events": events, "reflected": len(seen), "seconds": round(elapsed, 2),
            "events_per_s": round(len(seen) / elapsed, 2),
            **{f"freshness_p{q}_ms": float(np.percentile(fresh, q)) for q in (50, 95, 99)}}


def run_bench_pipeline(args: argparse.Namespace) -> dict:
    from vip5.demo_world import load_catalogue
    from vip5.stack import StackConfig

    catalogue = load_catalogue()[: args.items]
    item_ids = [p.item_id for p in catalogue]
    with tempfile.TemporaryDirectory(prefix="vip5-bench-") as tmp:
        work = Path(tmp)
        model_dir = build_bench_model(work / "model", preset=args.preset, item_ids=item_ids,
                                      user_ids=[f"user{n}" for n in range(args.users)], feature_dim=1280)
        def raw() -> float:
            return raw_rerank_rate(model_dir, item_ids, candidates=args.candidates, batch=args.max_batch,
                                   requests=args.raw_requests, prompt_history_len=5, feature_dim=1280)

        stack_cfg = StackConfig(work_dir=work, model_dir=model_dir, topic_prefix="bench.", partitions=3,
                                candidates=args.candidates, serve_args=("--max-batch", str(args.max_batch)))
        # raw rate before and after the pipeline run: a shared machine drifts, the mean brackets it
        raw_before = raw()
        pipe = pipeline_rate(stack_cfg, catalogue, events=args.events, users=args.users, timeout_s=args.timeout)
        raw_after = raw()
    raw_mean = (raw_before + raw_after) / 2
    return {"preset": args.preset, "candidates": args.candidates, "max_batch": args.max_batch,
            "raw_rerank_requests_per_s": round(raw_mean, 2),
            "raw_rerank_requests_per_s_before_after": [round(raw_before, 2), round(raw_after, 2)], **pipe,
            "throughput_ratio": round(pipe["events_per_s"] / raw_mean, 3)}


def register(commands, bench) -> None:
    p = add_command(bench, "pipeline", run_bench_pipeline,
                    "end-to-end events/s and freshness against the model's raw re-ranking rate")
    p.add_argument("--preset", default="tiny", help="VIP5 backbone preset (random weights)")
    p.add_argument("--events", type=int, default=300, help="interactions published")
    p.add_argument("--users", type=int, default=60)
    p.add_argument("--items", type=int, default=240, help="catalogue size (demo photos)")
    p.add_argument("--candidates", type=int, default=20)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--raw-requests", type=int, default=160)
    p.add_argument("--timeout", type=float, default=300.0)
