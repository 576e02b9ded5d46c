"""Configuration of the streams worker (one frozen object, built by the CLI from flags and env)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from index.candidates import CandidateConfig
from index.covisitation import CovisitationConfig
from index.encoders import EncoderConfig
from runtime.kafka import KafkaConfig
from schemas.topics import TopicConfig

TEXT_ENCODERS = ("minilm", "none")


@dataclass(frozen=True)
class StreamsConfig:
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    topics: TopicConfig = field(default_factory=TopicConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    candidates: CandidateConfig = field(default_factory=CandidateConfig)
    covisitation: CovisitationConfig = field(default_factory=CovisitationConfig)
    app_id: str = "vip5-streams"
    data_dir: str = "runs/streams"  # faust's working directory
    history_len: int = 50  # items kept per user
    dedupe_window: int = 512  # latest event ids remembered per user for duplicate detection
    # Bounded state, however many distinct users producers invent. A worker keeps the histories of
    # at most max_users users (of its partitions; the least recently active is evicted first) and
    # drops a user idle for longer than user_idle_s (0: no idle limit); evictions also delete the
    # table entry (a changelog tombstone), so a restart restores no more. A user costs 8 KB in memory
    # at 50 events and 50 KB with a full dedupe window (512 events; measured, see README), so the
    # default holds at most ~1 GB. An evicted user's next interaction starts an empty history.
    max_users: int = 20_000
    user_idle_s: float = 30 * 86400.0
    # > 0: the worker takes the interactions that arrive within this window (at most coalesce_max)
    # together, and a user's among them become one request; 0: one event at a time. `vip5 bench
    # pipeline` (burst of 300, 2 cores, two alternating pairs): 179 and 170 events/s at 5 ms against
    # 115 and 119 at 0; at 60 events/s freshness p50 132 against 125 ms, p99 329 against 392 ms.
    coalesce_ms: int = 5
    coalesce_max: int = 64  # most interactions buffered per coalescing window
    image_batch_size: int = 16  # images embedded per micro-batch
    image_batch_wait_ms: int = 200  # longest wait to fill an image micro-batch
    # Items without an image get a content vector of their title and category: "minilm"
    # (index.text_encoder, 384-d, the vectors `vip5 train --content text` trains item-token models
    # on), so a product nobody clicked yet can be retrieved and scored; "none": they get no vector.
    # On by default because logs without images (the Amazon data) otherwise have no content at all;
    # it costs ~90 MB and a second at start-up, and items with images never use it.
    text_encoder: str = "minilm"
    # Follow the learned retriever's topics (retriever-vectors, retriever-models; index.retriever)
    # and give its items `candidates.sequential_k` slots once a model is published; until then, or
    # with False, those slots go to the other sources.
    retriever: bool = True
    # The deployment's signing key (runtime.signing; the CLI reads VIP5_ADAPTER_SIGNING_KEY(_FILE)):
    # with it the retriever replica switches only to signed models whose vectors match their digest;
    # None accepts any well-formed retriever (logged as a warning).
    signing_key: bytes | None = field(default=None, repr=False)
    # Backpressure: faust stops fetching a partition while this many of its records wait unprocessed.
    stream_buffer_maxsize: int = 1024
    popularity_half_life_s: float = 3600.0
    fresh_max_age_s: float = 7 * 86400.0
    # Tansu reports end offsets wrongly unless every produce batch holds one record; faust's
    # table recovery depends on them. True costs throughput; set False against Apache Kafka.
    one_record_per_batch: bool = True
    replica_wait_s: float = 30.0  # how long start-up waits for the embeddings replica to catch up
    # OpenMP threads faiss may use in this process. The worker searches one user's query at a time,
    # which more threads do not speed up: on the 2-core box `vip5 bench index --quick` (10,000 items,
    # exact search) gave p50 0.31 / p99 0.40 ms with 1 thread and 1.39 / 2.94 ms with 2.
    faiss_threads: int = 1
    lag_interval_s: float = 5.0  # how often vip5_consumer_lag is read for the input partitions

    def __post_init__(self) -> None:
        positive = ("history_len", "dedupe_window", "max_users", "coalesce_max", "image_batch_size",
                    "image_batch_wait_ms", "stream_buffer_maxsize", "faiss_threads")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.lag_interval_s <= 0:
            raise ValueError(f"lag_interval_s: must be > 0, got {self.lag_interval_s}")
        for name in ("coalesce_ms", "user_idle_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.text_encoder not in TEXT_ENCODERS:
            raise ValueError(f"text_encoder: must be one of {TEXT_ENCODERS}, got {self.text_encoder!r}")
        if not self.app_id:
            raise ValueError("app_id: must not be empty")

    def replace(self, **changes) -> StreamsConfig:
        return dataclasses.replace(self, **changes)
