"""`vip5 bench pipeline --json`: what the streaming costs on top of the model, and where the time goes.

Side by side in one run, on the same model and candidate count:
  raw       VIP5Ranker.rank in-process on ready-made requests, before and after  -> requests/s
  burst     (default) interactions published as fast as possible through the whole system (broker,
            streams worker, model worker) until every one is reflected           -> events/s, freshness
  --rate R  an open loop: interactions published at R per second for --duration-s, whatever the
            system's progress                                                    -> per-stage p50/p99
  --find-max  open-loop runs at rates bisected between 0 and 1.2 x the raw rate: the highest rate
            whose freshness p99 stays under --p99-bound-ms with every event reflected is
            `max_rate_per_s` (without the bound: whose freshness does not grow during the run);
            then a run at half of it (`at_half_max`)
throughput_ratio = pipeline events/s / raw requests/s (1.0 would mean streaming costs nothing).
Stages (vip5.latency): to_streams, streams, to_model, queue, score, publish, to_subscriber, plus
freshness (event -> published) and delivered (event -> read by the bench's subscriber).
The model has random weights: cost does not depend on what it learned.
--report DIR: also DIR/index.html (vip5.report): freshness, adapter versions and stage latency of every
recommendation the bench read (warm-up included), a few of them as the demo photos they name.
"""

from __future__ import annotations

import argparse
import logging
import random
import shlex
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.cli import add_command

log = logging.getLogger(__name__)


def build_bench_model(path: Path, *, preset: str, item_ids: list[str], user_ids: list[str], feature_dim: int,
                      kind: str = "digits") -> Path:
    """A randomly initialised model saved to `path`: `kind` "tokens" (the default recipe: one token
    per catalogue item) or "digits" (the paper's digit-piece ids, scored by the candidate trie)."""
    from model_worker.vip5model.config import VIP5Config
    from model_worker.vip5model.items import ItemVocabulary
    from model_worker.vip5model.model import VIP5Model
    from model_worker.vip5model.tokenizer import build_template_tokenizer

    tokens = {"item_ids": "tokens", "n_items": len(item_ids)} if kind == "tokens" else {}
    config = VIP5Config(backbone=preset, image_feature_dim=feature_dim, **tokens)
    tokenizer = build_template_tokenizer([*item_ids, *user_ids, config.sequence_prompt])
    model = VIP5Model.build(config, tokenizer, seed=0)
    if model.item_tokens is not None:
        model.item_vocabulary = ItemVocabulary(item_ids)
    model.save_pretrained(path)
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
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as the stack's model worker runs (VIP5_TORCH_THREADS=1): a like-for-like ratio
    try:
        ranker.rank(reqs[:batch], features)  # warm-up
        start = time.perf_counter()
        for lo in range(0, len(reqs), batch):
            ranker.rank(reqs[lo: lo + batch], features)
        return len(reqs) / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)


class Collector:
    """Reads recommendations on a thread; per reflected event id, its stage times (vip5.latency)."""

    def __init__(self, stack) -> None:
        self.stack, self.stop = stack, threading.Event()
        self.samples: dict[str, dict[str, int]] = {}
        self.delivered_s: dict[str, float] = {}  # event id -> epoch s its recommendation was read
        self.served: list = []  # every recommendation read (vip5.report.ServedRecommendation), for --report
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from vip5.latency import stages_of
        from vip5.report import ServedRecommendation
        from vip5.subscribe import recommendations

        for rec in recommendations(self.stack.kafka, self.stack.topics, group_id="bench", stop=self.stop):
            now_s = time.time()
            stages = stages_of(rec, int(now_s * 1000))
            self.served.append(ServedRecommendation.of(rec, stages))
            for event_id in rec.event_ids:
                if event_id not in self.samples:  # a repeat is the same event served twice
                    self.samples[event_id], self.delivered_s[event_id] = stages, now_s

    def __enter__(self) -> Collector:
        self._thread.start()
        time.sleep(2 * self.stack.kafka.session_timeout_ms / 1000)  # the collector joins its group
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self._thread.join(timeout=10)

    def wait_for(self, event_ids: list[str], timeout_s: float) -> int:
        deadline = time.time() + timeout_s
        while time.time() < deadline and not all(e in self.samples for e in event_ids):
            time.sleep(0.05)
        return sum(e in self.samples for e in event_ids)


@dataclass
class LoadRun:
    """One load run's events; `publish` sends one (the stack's producer), `rate_per_s` None = burst."""

    tag: str
    events: int
    users: int
    catalogue: list
    rate_per_s: float | None = None
    event_ids: list[str] = field(default_factory=list)

    def publish(self, stack) -> float:
        """Publish every event (on schedule when rate_per_s is set); returns the start time (epoch s)."""
        from schemas.codec import encode
        from schemas.records import Interaction
        from schemas.topics import INTERACTIONS

        rng, start = random.Random(self.tag), time.time()
        for n in range(self.events):
            if self.rate_per_s:  # open loop: the schedule, not the system's progress, sets the pace
                delay = start + n / self.rate_per_s - time.time()
                if delay > 0:
                    time.sleep(delay)
            event = Interaction(event_id=f"{self.tag}-{n}", user_id=f"user{n % self.users}",
                                item_id=rng.choice(self.catalogue).item_id, kind="click",
                                event_time_ms=int(time.time() * 1000))
            stack.send(INTERACTIONS, event.user_id, encode(event))  # linger 0: it leaves now
            self.event_ids.append(event.event_id)
        stack.flush()
        return start


def load_run(stack, collector: Collector, run: LoadRun, *, timeout_s: float) -> dict:
    """Publish `run`, wait until every event is reflected (or timeout_s); freshness and stages."""
    from vip5.latency import summarize

    start = run.publish(stack)
    reflected = collector.wait_for(run.event_ids, timeout_s)
    samples = [collector.samples[e] for e in run.event_ids if e in collector.samples]
    end = max(collector.delivered_s[e] for e in run.event_ids) if reflected == run.events else time.time()
    elapsed = max(end - start, 1e-3)
    stages = summarize(samples)
    fresh = stages.get("freshness", {"p50_ms": float("nan"), "p99_ms": float("nan")})
    half = len(samples) // 2  # samples are in publish order: a queue that builds shows in the second half
    halves = [float(np.median([s["freshness"] for s in part])) if part else float("nan")
              for part in (samples[:half], samples[half:])]
    return {"rate_per_s": run.rate_per_s, "events": run.events, "reflected": reflected, "seconds": round(elapsed, 2),
            "events_per_s": round(reflected / elapsed, 2), "freshness_p50_ms": fresh["p50_ms"],
            "freshness_p99_ms": fresh["p99_ms"], "freshness_p50_ms_by_half": halves, "stages": stages}


def is_bounded(result: dict, *, p99_bound_ms: float | None) -> bool:
    """Every event reflected, and freshness p99 under the bound; without a bound, freshness that does
    not grow during the run (second half's median within 1.5x + 100 ms of the first's): no queue builds."""
    if result["reflected"] < result["events"]:
        return False
    if p99_bound_ms is not None:
        return result["freshness_p99_ms"] <= p99_bound_ms
    first, second = result["freshness_p50_ms_by_half"]
    return second <= 1.5 * first + 100


def find_max(run_at, *, hi_per_s: float, steps: int, p99_bound_ms: float | None) -> tuple[float, list[dict]]:
    """Bisect the rate in (0, hi_per_s]: the highest whose run stays bounded (`is_bounded`).
    Returns it (0.0 if none) and every run."""
    lo, hi, runs = 0.0, hi_per_s, []
    rate = hi_per_s / 2
    for _ in range(steps):
        result = run_at(rate)
        bounded = is_bounded(result, p99_bound_ms=p99_bound_ms)
        runs.append({**result, "bounded": bounded})
        log.info("rate %.2f/s: p99 %.0f ms, %d/%d reflected -> %s", rate, result["freshness_p99_ms"],
                 result["reflected"], result["events"], "bounded" if bounded else "not bounded")
        lo, hi = (rate, hi) if bounded else (lo, rate)
        rate = (lo + hi) / 2
    return lo, runs


def run_bench_pipeline(args: argparse.Namespace) -> dict:
    from vip5.demo_world import load_catalogue
    from vip5.stack import LocalStack, StackConfig

    catalogue = load_catalogue()[: args.items]
    item_ids = [p.item_id for p in catalogue]
    with tempfile.TemporaryDirectory(prefix="vip5-bench-") as tmp:
        work = Path(tmp)
        model_dir = build_bench_model(work / "model", preset=args.preset, item_ids=item_ids, kind=args.item_ids,
                                      user_ids=[f"user{n}" for n in range(args.users)], feature_dim=1280)

        def raw() -> float:
            return raw_rerank_rate(model_dir, item_ids, candidates=args.candidates, batch=args.max_batch,
                                   requests=args.raw_requests, prompt_history_len=5, feature_dim=1280)

        stack_cfg = StackConfig(work_dir=work, model_dir=model_dir, topic_prefix="bench.", partitions=3,
                                candidates=args.candidates, serve_args=("--max-batch", str(args.max_batch)),
                                streams_args=tuple(shlex.split(args.streams_args)))
        # raw rate before and after the pipeline runs: a shared machine drifts, the mean brackets it
        raw_before = raw()
        with LocalStack(stack_cfg) as stack:
            stack.publish_products(catalogue, wait_s=args.timeout)
            with Collector(stack) as collector:
                result = pipeline_runs(args, stack, collector, catalogue, raw_per_s=raw_before)
        raw_after = raw()
    raw_mean = (raw_before + raw_after) / 2
    pipeline_per_s = result.get("max_rate_per_s", result.get("events_per_s", 0.0))
    out = {"preset": args.preset, "item_ids": args.item_ids, "candidates": args.candidates, "max_batch": args.max_batch,
           "raw_rerank_requests_per_s": round(raw_mean, 2),
           "raw_rerank_requests_per_s_before_after": [round(raw_before, 2), round(raw_after, 2)], **result,
           "throughput_ratio": round(pipeline_per_s / raw_mean, 3)}
    if args.report:
        out["report"] = write_pipeline_report(out, collector.served, catalogue, Path(args.report))
    return out


def write_pipeline_report(result: dict, served: list, catalogue, out_dir: Path) -> str:
    from vip5.report import CatalogueItem, ReportData, write_report

    data = ReportData(title="vip5 bench pipeline", recommendations=served, summary=result,
                      no_quality_reason="the bench model has random weights; it measures cost, not quality "
                                        "(per-stage latency instead)",
                      catalogue={p.item_id: CatalogueItem(caption=p.article_type, image_path=p.image_path)
                                 for p in catalogue})
    index = str(write_report(data, out_dir).index.resolve())
    log.info("report: %s", index)
    return index


def pipeline_runs(args, stack, collector: Collector, catalogue, *, raw_per_s: float) -> dict:
    def run(tag: str, rate: float | None, events: int) -> dict:
        return load_run(stack, collector, LoadRun(tag=tag, events=events, users=args.users, catalogue=catalogue,
                                                  rate_per_s=rate), timeout_s=args.timeout)

    def run_at(rate: float) -> dict:
        return run(f"r{rate:.3f}", rate, max(int(rate * args.duration_s), 10))

    if args.warmup_events:  # first batches pay for lazy initialisation in every worker
        run("warmup", None, args.warmup_events)
    if args.find_max:
        max_rate, runs = find_max(run_at, hi_per_s=1.2 * raw_per_s, steps=args.steps, p99_bound_ms=args.p99_bound_ms)
        half = run_at(max_rate / 2) if max_rate > 0 else {}
        return {"max_rate_per_s": round(max_rate, 2), "p99_bound_ms": args.p99_bound_ms, "at_half_max": half,
                "runs": runs}
    if args.rate:
        return run_at(args.rate)
    return run("burst", None, args.events)


def register(commands, bench) -> None:
    p = add_command(bench, "pipeline", run_bench_pipeline,
                    "end-to-end events/s, freshness and per-stage latency against the model's raw re-ranking rate")
    p.add_argument("--preset", default="small", help="VIP5 backbone preset (random weights)")
    p.add_argument("--item-ids", choices=("tokens", "digits"), default="tokens",
                   help="one token per item (the default recipe) or the paper's digit-piece ids")
    p.add_argument("--events", type=int, default=300, help="interactions published in the burst (no --rate)")
    p.add_argument("--users", type=int, default=60)
    p.add_argument("--items", type=int, default=240, help="catalogue size (demo photos)")
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--raw-requests", type=int, default=160)
    p.add_argument("--timeout", type=float, default=300.0, help="longest wait for a run's events to be reflected")
    p.add_argument("--rate", type=float, default=None, help="open loop at this many interactions per second")
    p.add_argument("--duration-s", type=float, default=10.0, help="length of each open-loop run")
    p.add_argument("--find-max", action="store_true",
                   help="bisect the highest rate whose freshness p99 stays under --p99-bound-ms, then run at half")
    p.add_argument("--steps", type=int, default=5, help="open-loop runs of the --find-max bisection")
    p.add_argument("--p99-bound-ms", type=float, default=None,
                   help="--find-max: a rate is sustainable while freshness p99 stays below this (default: while "
                        "freshness does not grow during the run, whatever the model's own latency)")
    p.add_argument("--warmup-events", type=int, default=20, help="a burst before the measured runs (0: none)")
    p.add_argument("--report", default=None, metavar="DIR", help="also write an HTML report with plots to DIR/index.html")
    p.add_argument("--streams-args", default="", metavar="ARGS",
                   help="extra arguments of the streams worker, e.g. --streams-args=--batched-changelog (Apache "
                   "Kafka: changelog and requests in multi-record produce batches)")
