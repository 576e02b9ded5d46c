"""`vip5 demo`: the whole system on one machine, with real product photos and simulated shoppers.

    1. prepare a small VIP5 (cached under --work-dir): embed the catalogue's photos, train the tiny
       backbone on yesterday's simulated sessions ("pretrain"), then only the adapters ("adapt")
    2. start the embedded broker, create the topics, start the streams worker, the model worker
       and the adapter trainer (which publishes new adapter versions the model worker swaps in)
    3. publish the catalogue (with a few broken records), then a live stream of interactions,
       with new products arriving halfway
    4. subscribe to the recommendations and the explanations that follow them; show both as they arrive
    5. print a summary (events in, recommendations and explanations out, dead letters, freshness), stop
    6. with --report DIR: write DIR/index.html (vip5.report) from what the subscriber saw, print its path
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.cli import add_command
from vip5.latency import stages_of, summarize
from vip5.report import CatalogueItem, QualityFigure, ReportData, ServedRecommendation, write_report

log = logging.getLogger(__name__)

PREPARATION_RECIPE = 2  # bump when prepare_model's training data or schedule changes (invalidates caches)


@dataclass(frozen=True)
class DemoConfig:
    work_dir: Path = Path("runs/demo")
    users: int = 40
    live_events: int = 160
    events_per_s: float = 4.0
    new_products: int = 40  # of the catalogue, held back and published during the live stream
    image_size: int = 160  # encoder input side, the same for training and serving
    candidates: int = 20  # retrieved per request, re-ranked by VIP5
    adapter_round_events: int = 60  # the trainer tunes the adapters after this many fresh events
    adapter_round_steps: int = 20
    adapter_max_regression: float = 0.02  # held-out MRR a new version may lose (small, noisy hold-outs)
    session_len: int = 8  # past interactions per shopper used for training
    pretrain_steps: int = 150
    adapt_steps: int = 50
    train_budget_s: float = 150.0  # cap per stage on a slow or busy machine
    seed: int = 7
    partitions: int = 3
    drain_timeout_s: float = 90.0

    def __post_init__(self) -> None:
        if self.users < 1 or self.live_events < 1 or self.events_per_s <= 0:
            raise ValueError("users, live_events and events_per_s must be positive")


def prepare_model(cfg: DemoConfig, world) -> Path:
    """A trained tiny VIP5 for the demo's catalogue; reused when already prepared with this config."""
    from index.encoders import EncoderConfig, build_encoder
    from model_worker.tuning import ExampleConfig, TuneConfig, explanation_prompts, history_prompts, tune
    from model_worker.vip5model.config import VIP5Config
    from model_worker.vip5model.model import VIP5Model
    from model_worker.vip5model.tokenizer import build_template_tokenizer

    model_dir = cfg.work_dir / "model"
    stamp = model_dir / "demo.json"
    fingerprint = {"recipe": PREPARATION_RECIPE, "users": cfg.users, "seed": cfg.seed, "image_size": cfg.image_size,
                   "pretrain_steps": cfg.pretrain_steps, "adapt_steps": cfg.adapt_steps}
    if stamp.exists() and json.loads(stamp.read_text()) == fingerprint:
        log.info("reusing the prepared model in %s", model_dir)
        return model_dir
    import torch

    catalogue, shoppers = world
    torch.set_num_threads(1)  # tiny matrices: a second thread only adds hand-offs on a shared CPU
    log.info("preparing the demo model: embedding %d product photos", len(catalogue))
    encoder = build_encoder(EncoderConfig(image_size=cfg.image_size))
    vectors = encoder.embed([p.image_path for p in catalogue]).vectors
    features = {p.item_id: v for p, v in zip(catalogue, vectors, strict=True)}
    rng = random.Random(cfg.seed)
    from vip5.demo_world import session

    ids = [p.item_id for p in catalogue]
    # The catalogue has no reviews: the explanation task learns to describe a product by its title.
    texts = {p.item_id: p.title.lower() for p in catalogue}
    examples = ExampleConfig(history_len=5, direct_candidates=10)
    prompts = []
    for shopper in shoppers:
        items = [p.item_id for p in session(shopper, catalogue, cfg.session_len, rng)]
        prompts += history_prompts(shopper.user_id, items, ids, rng, examples)
        prompts += explanation_prompts(shopper.user_id, items, texts, rng)
    tokenizer = build_template_tokenizer([s.user_id for s in shoppers] + ids + list(texts.values()))
    model = VIP5Model.build(VIP5Config(backbone="tiny", image_feature_dim=encoder.dim), tokenizer, seed=cfg.seed)
    for stage, steps, lr in (("pretrain", cfg.pretrain_steps, 3e-3), ("adapt", cfg.adapt_steps, 1e-3)):
        result = tune(model, prompts, features, TuneConfig(steps=steps, batch_size=16, lr=lr, warmup_steps=10,
                                                           time_budget_s=cfg.train_budget_s, seed=cfg.seed),
                      stage=stage)
        log.info("stage %s: %s", stage, result)
    model.save_pretrained(model_dir)
    stamp.write_text(json.dumps(fingerprint))
    return model_dir


class Tally:
    """What the subscriber saw, for the live display and the summary."""

    def __init__(self, catalogue, shoppers):
        self.kind = {p.item_id: p.article_type for p in catalogue}
        self.title = {p.item_id: p.title for p in catalogue}
        self.likes = {s.user_id: set(s.likes) for s in shoppers}
        self.recs, self.event_ids, self.freshness_ms, self.stages = 0, set(), [], []
        self.explanations = 0
        self.adapter_versions: dict[str, int] = {}
        self.served: list[ServedRecommendation] = []  # every recommendation, for --report
        self.top_liked = 0
        self.lock = threading.Lock()

    def add(self, rec) -> str:
        with self.lock:
            self.recs += 1
            self.event_ids.update(rec.event_ids)
            self.freshness_ms.append(rec.publish_time_ms - rec.event_time_ms)
            self.stages.append(stages_of(rec, int(time.time() * 1000)))
            self.served.append(ServedRecommendation.of(rec, self.stages[-1]))
            self.adapter_versions[rec.adapter_version] = self.adapter_versions.get(rec.adapter_version, 0) + 1
            liked = self.likes.get(rec.user_id, set())
            self.top_liked += bool(rec.items) and self.kind.get(rec.items[0].item_id) in liked
        top = ", ".join(self.kind.get(i.item_id, i.item_id) for i in rec.items[:3])
        return (f"{rec.user_id} likes {'+'.join(sorted(liked))}: {top}  "
                f"[{rec.publish_time_ms - rec.event_time_ms} ms]")

    def add_explanation(self, explanation) -> str:
        """The line for an Explanation, which follows its recommendation on the explanations topic."""
        with self.lock:
            self.explanations += 1
        kind = self.kind.get(explanation.item_id, explanation.item_id)
        return (f"  {explanation.user_id}, why {kind}: {self.explain(explanation.item_id, explanation.text)}  "
                f"[{explanation.publish_time_ms - explanation.event_time_ms} ms]")

    def explain(self, item_id: str, generated: str) -> str:
        """The model's explanation when it fits the item (shares a word with its title); otherwise
        a sentence built from the item's own fields, marked as such. The demo's small model learns
        explanations from titles alone within its budget and often repeats one sentence."""
        title = self.title.get(item_id, "")
        if set(generated.lower().split()) & {w for w in title.lower().split() if len(w) > 3}:
            return f'"{generated}"'
        return f'"{title}, a {self.kind.get(item_id, "product").lower()} like ones you chose" (from the item\'s fields)'


def run_pipeline(cfg: DemoConfig, world, model_dir: Path, tally: Tally, *, show) -> dict:
    from runtime.kafka import read_topic
    from schemas.records import Explanation
    from schemas.topics import DEAD_LETTER, EXPLANATIONS, INTERACTIONS, ITEMS, RECOMMENDATIONS
    from vip5.stack import LocalStack, StackConfig
    from vip5.subscribe import follow

    catalogue, shoppers = world
    rng = random.Random(cfg.seed + 1)
    artifacts = cfg.work_dir / "artifacts"
    shutil.rmtree(artifacts, ignore_errors=True)  # each demo starts from the prepared model's adapter (v1)
    trainer = ("--artifacts-dir", str(artifacts), "--every-events", str(cfg.adapter_round_events),
               "--min-events", "20", "--steps", str(cfg.adapter_round_steps),
               "--max-regression", str(cfg.adapter_max_regression))
    stack_cfg = StackConfig(work_dir=cfg.work_dir, model_dir=model_dir, topic_prefix="demo.",
                            partitions=cfg.partitions, image_size=cfg.image_size, candidates=cfg.candidates,
                            explain=True, trainer_args=trainer)
    stop = threading.Event()
    with LocalStack(stack_cfg) as stack:
        def subscribe():
            for record in follow(stack.kafka, stack.topics, (RECOMMENDATIONS, EXPLANATIONS),
                                 group_id="demo-subscriber", stop=stop):
                show(tally.add_explanation(record) if isinstance(record, Explanation) else tally.add(record))

        subscriber = threading.Thread(target=subscribe, daemon=True)
        subscriber.start()
        try:
            show("workers ready; publishing the catalogue")
            initial, new = catalogue[: len(catalogue) - cfg.new_products], catalogue[len(catalogue) - cfg.new_products:]
            embedded = stack.publish_products(initial)
            bad = [(ITEMS, b"\x92not an item"), (INTERACTIONS, b"\x81\xa6schema\xa5bogus"),
                   (INTERACTIONS, _encode_bad_rating())]
            for spec, payload in bad:
                stack.send(spec, b"bad", payload)
            stack.flush()
            show(f"{embedded} product embeddings published; starting the live interaction stream")
            events = _live_stream(cfg, stack, shoppers, initial, new, rng, show)
            expected = {f"demo-{s.user_id}-{n}" for n in range(cfg.live_events) for s in shoppers}
            deadline = time.monotonic() + cfg.drain_timeout_s
            while time.monotonic() < deadline:
                with tally.lock:
                    if len(tally.event_ids & expected) >= events:
                        break
                time.sleep(0.5)
        finally:
            stop.set()
            subscriber.join(timeout=10)
        letters = read_topic(stack.kafka, stack.topics.name(DEAD_LETTER), timeout_s=5, idle_s=1.0)
    fresh = np.asarray(tally.freshness_ms or [0])
    return {
        "events_in": events + len(catalogue) + len(bad),
        "interactions_in": events,
        "products_in": len(catalogue),
        "invalid_records_in": len(bad),
        "recommendations_out": tally.recs,
        "explanations_out": tally.explanations,
        "interactions_reflected": len(tally.event_ids & expected),
        "dead_letters": len(letters),
        "freshness_p50_ms": float(np.percentile(fresh, 50)),
        "freshness_p99_ms": float(np.percentile(fresh, 99)),
        "stage_p50_ms": {name: q["p50_ms"] for name, q in summarize(tally.stages).items()},
        "recommendations_by_adapter_version": tally.adapter_versions,
        "top1_in_liked_types": round(tally.top_liked / max(1, tally.recs), 3),
        "liked_share_of_catalogue": round(_liked_share(catalogue, shoppers), 3),
    }


def _live_stream(cfg: DemoConfig, stack, shoppers, initial, new, rng, show) -> int:
    """Publish the live interactions at cfg.events_per_s; new products arrive halfway. Returns the count."""
    from schemas.topics import INTERACTIONS, ITEMS
    from vip5.demo_world import interaction, next_item

    live = list(initial)
    started = time.monotonic()
    for n in range(cfg.live_events):
        if n == cfg.live_events // 2 and new:
            stamp = int(time.time() * 1000)
            for product in new:
                stack.send(ITEMS, product.item_id, _encode(product.upsert(stamp)))
            live += new
            show(f"{len(new)} new products published")
        shopper = rng.choice(shoppers)
        event = interaction(shopper, next_item(shopper, live, rng), n, int(time.time() * 1000), rng)
        stack.send(INTERACTIONS, event.user_id, _encode(event))
        stack.flush()
        time.sleep(max(0.0, started + (n + 1) / cfg.events_per_s - time.monotonic()))
    return cfg.live_events


def _encode(record) -> bytes:
    from schemas.codec import encode

    return encode(record)


def _encode_bad_rating() -> bytes:
    """An interaction of kind 'rating' without a rating: valid msgpack, invalid record."""
    import msgpack

    return msgpack.packb({"schema": "interaction", "v": 1, "event_id": "bad-1", "user_id": "shopper000",
                          "item_id": "p1", "kind": "rating", "event_time_ms": int(time.time() * 1000)})


def _liked_share(catalogue, shoppers) -> float:
    """Chance that a random catalogue item is of a liked type, averaged over shoppers."""
    kinds = [p.article_type for p in catalogue]
    return float(np.mean([np.mean([k in s.likes for k in kinds]) for s in shoppers]))


def run_demo(args: argparse.Namespace) -> dict:
    import signal

    from vip5.demo_world import load_catalogue, simulate_users

    # SIGTERM unwinds like Ctrl-C, so the broker and the worker processes are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    cfg = DemoConfig(work_dir=Path(args.work_dir), users=args.users, live_events=args.events,
                     events_per_s=args.rate, seed=args.seed, pretrain_steps=args.pretrain_steps,
                     adapt_steps=args.adapt_steps)
    started = time.monotonic()
    catalogue = load_catalogue()
    shoppers = simulate_users(catalogue, cfg.users, seed=cfg.seed)
    world = (catalogue, shoppers)
    model_dir = prepare_model(cfg, world)
    prepared_s = time.monotonic() - started

    def show(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    tally = Tally(catalogue, shoppers)
    summary = run_pipeline(cfg, world, model_dir, tally, show=show)
    summary.update({"model_preparation_s": round(prepared_s, 1), "elapsed_s": round(time.monotonic() - started, 1)})
    if args.report:  # matplotlib is imported only here, when a report is drawn
        files = write_report(demo_report(tally, summary, world), Path(args.report))
        show(f"report: {files.index.resolve()}")
        summary["report"] = str(files.index.resolve())
    return summary


def demo_report(tally: Tally, summary: dict, world) -> ReportData:
    """The report of a demo run: what the subscriber saw, its summary, and how often the top item is
    of a type the shopper likes next to the chance that a random catalogue item is."""
    catalogue, shoppers = world
    quality = QualityFigure(
        metric="share whose top item is of a type the shopper likes",
        values={"this run (top item)": summary["top1_in_liked_types"],
                "random catalogue item": summary["liked_share_of_catalogue"]},
        note="the shoppers are simulated, so the quality figure is whether the top item matches their liked "
             "types; the baseline is the chance that a random catalogue item does")
    return ReportData(
        title="vip5 demo", recommendations=list(tally.served), summary=summary, quality=quality,
        catalogue={p.item_id: CatalogueItem(caption=p.article_type, image_path=p.image_path) for p in catalogue},
        user_notes={s.user_id: f"likes {' + '.join(sorted(s.likes))}" for s in shoppers})


def register(commands, bench) -> None:
    p = add_command(commands, "demo", run_demo,
                    "run the whole system on this machine with real product photos and print a summary")
    p.add_argument("--work-dir", default="runs/demo", help="model cache, worker logs and state")
    p.add_argument("--users", type=int, default=40, help="simulated shoppers")
    p.add_argument("--events", type=int, default=DemoConfig.live_events, help="live interactions to publish")
    p.add_argument("--rate", type=float, default=DemoConfig.events_per_s, help="live interactions per second")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--pretrain-steps", type=int, default=DemoConfig.pretrain_steps,
                   help="model preparation: steps training the tiny backbone")
    p.add_argument("--adapt-steps", type=int, default=DemoConfig.adapt_steps,
                   help="model preparation: steps training only the adapters")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="also write an HTML report with plots and product photos to DIR/index.html")
