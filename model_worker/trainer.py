"""The incremental adapter trainer: learn from the interaction stream, publish accepted adapters.

    interactions (own consumer group) ──► per-user histories + a buffer of fresh events
    item-embeddings (replica)         ──► image features for the prompts
    every N events or T seconds:  fresh events ─► train slice (older) + held-out slice (newest)
        a named copy of the current adapter set (one model, vip5model.slots) ─► tune it (backbone
        frozen) on the train slice; evaluate current and candidate on the held-out slice (direct
        task, MRR, ties ranked pessimistically: a candidate that scores everything alike gets 1/N)
        accepted (not worse by more than max_regression) ─► artifact store ─► adapter-updates

Offsets are committed after each round, so a restart re-learns at most one round of events.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np

from model_worker.artifacts import ArtifactStore
from model_worker.rerank import RerankConfig, Reranker, ScoringRequest
from model_worker.tuning import ExampleConfig, TuneConfig, position_prompts, tune
from model_worker.vip5model.slots import AdapterSlots
from runtime.kafka import KafkaConfig
from runtime.metrics import WorkerMetrics, serve_metrics
from schemas.codec import decode, encode
from schemas.errors import SchemaError
from schemas.records import AdapterUpdate, Interaction
from schemas.topics import ADAPTER_UPDATES, INTERACTIONS, ITEM_EMBEDDINGS, TopicConfig

log = logging.getLogger(__name__)

READY_LINE = "adapter trainer ready"
CANDIDATE_SLOT = "candidate"  # the adapter set a round trains, next to the current version's


@dataclass(frozen=True)
class TrainerConfig:
    model_dir: str
    artifacts_dir: str = "artifacts"
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    topics: TopicConfig = field(default_factory=TopicConfig)
    group_id: str = "vip5-adapter-trainer"
    every_events: int = 500  # a round after this many fresh events ...
    every_s: float = 300.0  # ... or this long since the last round (with at least min_events)
    min_events: int = 50
    holdout_fraction: float = 0.2  # newest share of a round's events, for evaluation only
    max_regression: float = 0.0  # accept when candidate MRR >= current MRR - this
    tune: TuneConfig = field(default_factory=lambda: TuneConfig(steps=50, batch_size=16, lr=1e-3, warmup_steps=5))
    examples: ExampleConfig = field(default_factory=lambda: ExampleConfig(history_len=5, direct_candidates=20))
    # signs every published version (model_worker.artifacts); run_trainer refuses to start without it
    adapter_signing_key: bytes | None = field(default=None, repr=False)
    history_len: int = 50
    # Bounded state, whatever the number of distinct users producers invent. A user's history costs
    # 3.5 KB at history_len 50 (measured: 50 ten-character item ids, the list, the dict entry), so
    # the default holds ~175 MB at most; the least recently active user is forgotten first (its
    # next event is then context, not an example). Fresh examples wait for a round; past
    # max_fresh_examples (0.65 KB each) the oldest are dropped, e.g. while the catalogue is empty.
    max_users: int = 50_000
    max_fresh_examples: int = 20_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.every_events < 1 or self.min_events < 2:
            raise ValueError("every_events: must be >= 1, and min_events >= 2")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction: {self.holdout_fraction} must be in (0, 1)")
        if self.every_s <= 0:
            raise ValueError(f"every_s: {self.every_s} must be > 0")
        if self.max_users < 1 or self.max_fresh_examples < self.every_events:
            raise ValueError(f"max_users: must be >= 1, and max_fresh_examples >= every_events ({self.every_events})")


@dataclass(frozen=True)
class FreshEvent:
    """An interaction seen by the trainer with the user's history before it: one training example."""

    user_id: str
    before: tuple[str, ...]  # the user's items before this event, oldest first
    target: str


def next_version(store: ArtifactStore) -> str:
    numbers = [int(m.group(1)) for v in store.manifests() if (m := re.fullmatch(r"v(\d+)", v["version"]))]
    return f"v{max(numbers, default=1) + 1}"


def direct_mrr(model, examples: list[FreshEvent], features, catalogue: list[str], *, candidates: int,
               seed: int) -> float:
    """Mean reciprocal rank of the true item among `candidates` (true + sampled negatives), direct prompt.

    Ties count against the model: the true item ranks below every candidate scored the same, so a
    model that scores every candidate alike gets 1/candidates, not 1.0."""
    rng = random.Random(seed)
    requests, truth = [], []
    for ex in examples:
        pool = [i for i in catalogue if i != ex.target and i not in ex.before]
        items = [ex.target, *rng.sample(pool, min(len(pool), candidates - 1))]
        rng.shuffle(items)
        requests.append(ScoringRequest(user_id=ex.user_id, history=ex.before, candidates=tuple(items)))
        truth.append(items.index(ex.target))
    scores = Reranker(model, features, RerankConfig(history_len=5)).score(requests)
    ranks = [sum(s >= row[t] for s in row) for row, t in zip(scores, truth, strict=True)]  # row[t] counts itself
    return float(np.mean([1.0 / r for r in ranks]))


class AdapterTrainer:
    """The trainer's state and one training round; Kafka I/O lives in `run_trainer`."""

    def __init__(self, cfg: TrainerConfig, model, *, backbone_id: str, version: str, store: ArtifactStore,
                 metrics: WorkerMetrics | None = None):
        self.cfg, self.model, self.backbone_id, self.version, self.store = cfg, model, backbone_id, version, store
        self.metrics = metrics or WorkerMetrics("trainer")
        self.metrics.set_adapter(version)
        self.histories: OrderedDict[str, list[str]] = OrderedDict()  # least recently active first
        self.fresh: deque[FreshEvent] = deque(maxlen=cfg.max_fresh_examples)
        self.forgotten_users = 0
        self.last_round_s = time.monotonic()
        self.rounds = 0
        self.rejected_rounds = 0  # candidates that did not pass the acceptance check
        self.rejected_updates = 0
        self.slots = AdapterSlots(model, version)  # the current set, plus the candidate during a round

    def observe(self, interaction: Interaction) -> None:
        history = self.histories.pop(interaction.user_id, None) or []
        if history:
            self.fresh.append(FreshEvent(interaction.user_id, tuple(history[-self.cfg.history_len:]), interaction.item_id))
        history.append(interaction.item_id)
        del history[: -self.cfg.history_len]
        self.histories[interaction.user_id] = history  # now the most recently active
        while len(self.histories) > self.cfg.max_users:
            self.histories.popitem(last=False)
            self.forgotten_users += 1

    def due(self) -> bool:
        if len(self.fresh) >= self.cfg.every_events:
            return True
        return len(self.fresh) >= self.cfg.min_events and time.monotonic() - self.last_round_s >= self.cfg.every_s

    def round(self, features, catalogue: list[str]) -> AdapterUpdate | None:
        """Tune a candidate on the fresh events; returns the AdapterUpdate if it was accepted."""
        examples, self.fresh = list(self.fresh), deque(maxlen=self.cfg.max_fresh_examples)
        self.last_round_s, self.rounds = time.monotonic(), self.rounds + 1
        cut = max(1, int(len(examples) * (1 - self.cfg.holdout_fraction)))
        train, holdout = examples[:cut], examples[cut:] or examples[-1:]
        rng = random.Random(self.cfg.seed + self.rounds)
        prompts = [p for ex in train for p in position_prompts(ex.user_id, ex.before, ex.target, catalogue, rng,
                                                                self.cfg.examples)]
        slots = self.slots
        slots.copy(self.version, CANDIDATE_SLOT)
        slots.activate(CANDIDATE_SLOT)
        sequences = [[*ex.before, ex.target] for ex in train]  # item-token models train on these
        fit = tune(self.model, prompts, features, self.cfg.tune, stage="adapt", sequences=sequences)
        self.model.eval()
        evaluate = dict(features=features, catalogue=catalogue, candidates=self.cfg.examples.direct_candidates,
                        seed=self.cfg.seed)
        after = direct_mrr(self.model, holdout, **evaluate)
        slots.activate(self.version)
        before = direct_mrr(self.model, holdout, **evaluate)
        metrics = {"holdout_mrr_before": before, "holdout_mrr_after": after, "train_events": float(len(train)),
                   "holdout_events": float(len(holdout)), "loss_first": fit["loss_first"], "loss_last": fit["loss_last"]}
        if after < before - self.cfg.max_regression:
            slots.drop(CANDIDATE_SLOT)
            self.rejected_rounds += 1
            self.metrics.trainer_rounds.labels(outcome="rejected").inc()
            log.info("round %d: candidate rejected (MRR %.4f -> %.4f)", self.rounds, before, after)
            return None
        version = next_version(self.store)
        slots.activate(CANDIDATE_SLOT)
        update = self.store.publish(self.model, version=version, parent_version=self.version, metrics=metrics,
                                    backbone_id=self.backbone_id)
        slots.rename(CANDIDATE_SLOT, version)
        slots.drop(self.version)
        self.version = version
        self.metrics.trainer_rounds.labels(outcome="published").inc()
        self.metrics.set_adapter(version)
        log.info("round %d: published %s (MRR %.4f -> %.4f, %d train events)", self.rounds, version, before, after,
                 len(train))
        return update

    def adopt(self, update: AdapterUpdate) -> bool:
        """Follow a version published elsewhere (e.g. a rollback): train on top of it from now on.

        An update that fails verification (outside the store, unsigned, wrong backbone, missing or
        corrupt files) is skipped with a log line and counted in `rejected_updates`; the trainer
        keeps building on its current version. Returns whether the update was adopted."""
        from model_worker.artifacts import ArtifactError, load_verified

        if update.version == self.version:
            return True
        try:
            # stage checks config, keys, shapes and backbone before it keeps anything
            self.slots.stage(update.version, load_verified(update, backbone_id=self.backbone_id, store=self.store))
        except (ArtifactError, ValueError) as err:
            self.rejected_updates += 1
            self.metrics.adapter_rejections.inc()
            log.error("rejected adapter %s (%s): %s; still building on %s", update.version,
                      getattr(err, "kind", "invalid"), err, self.version)
            return False
        self.slots.activate(update.version)
        self.slots.drop(self.version)
        self.version = update.version
        self.metrics.adapter_swaps.inc()
        self.metrics.set_adapter(update.version)
        log.info("trainer now builds on adapter %s", update.version)
        return True


def latest_update(kafka: KafkaConfig, topics: TopicConfig) -> AdapterUpdate | None:
    """The newest valid record on the adapter-updates topic (its single partition is ordered)."""
    from runtime.kafka import read_topic

    latest = None
    for message in read_topic(kafka, topics.name(ADAPTER_UPDATES), timeout_s=10, idle_s=1.0):
        try:
            latest = decode(message.value, AdapterUpdate)
        except SchemaError:
            continue
    return latest


def announce(out, cfg: TrainerConfig, update: AdapterUpdate) -> None:
    """Publish an adapter update and wait for the broker's acknowledgement (raises if it never comes)."""
    out.send(cfg.topics.name(ADAPTER_UPDATES), key=b"adapter", value=encode(update)).get(
        timeout=cfg.kafka.delivery_timeout_ms / 1000 + 5)


def run_trainer(cfg: TrainerConfig, stop, *, metrics_port: int | None = None, metrics_host: str = "127.0.0.1"
                ) -> dict:
    """The trainer process: consume interactions, run rounds, publish accepted versions; with
    `metrics_port`, /metrics, /healthz and /readyz (runtime.metrics) on that port."""
    from model_worker.ranker import BASE_VERSION
    from model_worker.vip5model.checkpoint import backbone_sha256
    from model_worker.vip5model.model import VIP5Model
    from runtime.features import ItemFeatures, feature_follower
    from runtime.kafka import consumer, create_topics, producer, tail_consumer

    create_topics(cfg.kafka, cfg.topics)
    model = VIP5Model.from_pretrained(cfg.model_dir)
    model.set_stage("adapt")
    if cfg.adapter_signing_key is None:
        raise ValueError("adapter_signing_key: the trainer signs every version; set VIP5_ADAPTER_SIGNING_KEY "
                         "or VIP5_ADAPTER_SIGNING_KEY_FILE")
    store = ArtifactStore(cfg.artifacts_dir, signing_key=cfg.adapter_signing_key)
    backbone_id = backbone_sha256(model)
    out = producer(cfg.kafka)
    if not store.manifests():  # the shipped adapter becomes v1, so every version can be rolled back to
        first = store.publish(model, version=BASE_VERSION, parent_version=None, metrics={}, backbone_id=backbone_id)
        announce(out, cfg, first)
    metrics = WorkerMetrics("trainer")
    trainer = AdapterTrainer(cfg, model, backbone_id=backbone_id, version=BASE_VERSION, store=store, metrics=metrics)
    current = latest_update(cfg.kafka, cfg.topics)
    if current is not None:
        trainer.adopt(current)
    replica = ItemFeatures(model.config.image_feature_dim)
    follower = feature_follower(lambda: tail_consumer(cfg.kafka), cfg.topics.name(ITEM_EMBEDDINGS), replica)
    follower.start()
    metrics.require(f"{follower.topic} follower", follower.healthy)
    events = consumer(cfg.kafka, cfg.group_id, [cfg.topics.name(INTERACTIONS)])
    http = serve_metrics(metrics, host=metrics_host, port=metrics_port) if metrics_port else None
    metrics.alive.set()
    metrics.ready.set()
    log.info("%s: building on adapter %s", READY_LINE, trainer.version)
    published = 0
    interactions_topic = cfg.topics.name(INTERACTIONS)
    try:
        while not stop.is_set():
            for records in events.poll(timeout_ms=500).values():
                metrics.records_in.labels(topic=interactions_topic).inc(len(records))
                for message in records:
                    try:
                        trainer.observe(decode(message.value, Interaction))
                    except SchemaError:
                        continue  # the streams worker dead-letters invalid interactions
            metrics.update_lag(events)
            if not trainer.due():
                continue
            latest = latest_update(cfg.kafka, cfg.topics)
            if latest is not None and latest.version != trainer.version:
                trainer.adopt(latest)  # e.g. an operator rolled back
            catalogue = sorted(replica.ids())  # not arrival order: a round's evaluation must not depend on fetch timing
            with metrics.stage_seconds.labels(stage="train_round").time():
                update = trainer.round(replica.features(catalogue), catalogue) if len(catalogue) >= 2 else None
            if update is not None:
                announce(out, cfg, update)
                metrics.records_out.labels(topic=cfg.topics.name(ADAPTER_UPDATES)).inc()
                published += 1
            events.commit()
    finally:
        metrics.alive.clear()
        follower.stop()
        events.close()
        out.close()
        if http is not None:
            http.shutdown()
    return {"rounds": trainer.rounds, "published": published, "version": trainer.version,
            "rejected_updates": trainer.rejected_updates}
