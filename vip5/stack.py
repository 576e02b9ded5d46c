"""The whole system on one machine: embedded broker, topics and worker processes.

    with LocalStack(StackConfig(work_dir=..., model_dir=...)) as stack:
        stack.kafka, stack.topics      # how to reach it
        stack.send(spec, key, payload) # publish raw bytes to a registry topic
        stack.restart_broker(kill=True)  # with durable_broker=True: a crash that loses nothing

Used by `vip5 demo` and the pipeline/adapter/fault benches. Workers run as separate processes
(`vip5 streams`, `vip5 serve`, optionally `vip5 trainer`) exactly as they would in production.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from runtime.kafka import KafkaConfig, create_topics, producer
from schemas.topics import TopicConfig, TopicSpec
from vip5.broker import BrokerConfig, EmbeddedBroker
from vip5.object_store import LocalObjectStore
from vip5.processes import WorkerProcess

# Tansu joins a consumer group in about half the session timeout: short sessions start quickly.
SESSION_MS, HEARTBEAT_MS = 3000, 500


@dataclass(frozen=True)
class StackConfig:
    work_dir: Path
    model_dir: Path
    topic_prefix: str = "local."
    partitions: int = 3
    image_size: int = 160
    candidates: int = 20
    prompt_history_len: int = 5
    explain: bool = False
    serve_args: tuple[str, ...] = ()
    streams_args: tuple[str, ...] = ()
    trainer_args: tuple[str, ...] | None = None  # None: no adapter trainer
    start_timeout_s: float = 180.0
    extra_env: dict = field(default_factory=dict)
    durable_broker: bool = False  # broker storage in a local S3 store (vip5.object_store), not memory


class LocalStack:
    def __init__(self, cfg: StackConfig):
        self.cfg = cfg
        self.store = LocalObjectStore() if cfg.durable_broker else None
        storage = dict(storage_url=self.store.storage_url, storage_env=self.store.env) if self.store else {}
        self.broker = EmbeddedBroker(BrokerConfig(port=0, log_path=str(cfg.work_dir / "logs" / "broker.log"),
                                                  **storage))
        self.topics = TopicConfig(prefix=cfg.topic_prefix, partitions=cfg.partitions)
        self.kafka: KafkaConfig | None = None
        self.workers: dict[str, WorkerProcess] = {}
        self._signing_key = secrets.token_hex(32)
        self._producer = None

    def __enter__(self) -> LocalStack:
        if self.store is not None:
            self.store.start()
        self.broker.start()
        try:
            self.kafka = KafkaConfig(bootstrap_servers=self.broker.bootstrap, session_timeout_ms=SESSION_MS,
                                     heartbeat_interval_ms=HEARTBEAT_MS)
            create_topics(self.kafka, self.topics)
            for name, args in self._worker_args().items():
                self.workers[name] = self.worker(name, args).start()
            self.wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _worker_args(self) -> dict[str, list[str]]:
        cfg = self.cfg
        serve = ["serve", "--model-dir", str(cfg.model_dir), "--prompt-history-len", str(cfg.prompt_history_len),
                 *(["--explain"] if cfg.explain else []), *cfg.serve_args]
        streams = ["streams", "--data-dir", str(cfg.work_dir / "faust"), "--image-size", str(cfg.image_size),
                   "--candidates", str(cfg.candidates), *cfg.streams_args]
        workers = {"streams": streams, "model-worker": serve}
        if cfg.trainer_args is not None:
            workers["trainer"] = ["trainer", "--model-dir", str(cfg.model_dir), *cfg.trainer_args]
        return workers

    def worker(self, name: str, args: list[str]) -> WorkerProcess:
        """A (not yet started) worker process wired to this stack."""
        common = ["--bootstrap", self.broker.bootstrap, "--topic-prefix", self.topics.prefix,
                  "--partitions", str(self.topics.partitions)]
        env = {"VIP5_KAFKA_SESSION_TIMEOUT_MS": str(SESSION_MS), "VIP5_KAFKA_HEARTBEAT_INTERVAL_MS": str(HEARTBEAT_MS),
               # the workers share this machine's cores: one torch/OpenMP thread each (measured on
               # 2 cores: a tiny-model training step took 0.7 s with one thread, 3.7 s with two)
               "VIP5_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1",
               # one key per stack: its trainer signs adapter versions and `publish_retriever(...,
               # signing_key=stack.signing_key)` retrievers; its workers verify them
               "VIP5_ADAPTER_SIGNING_KEY": self._signing_key, "VIP5_ARTIFACT_DIR": str(self.cfg.work_dir / "artifacts"),
               **self.cfg.extra_env}
        return WorkerProcess([args[0], *common, *args[1:]], log_path=self.cfg.work_dir / "logs" / f"{name}.log", env=env)

    def wait_ready(self, names=None) -> None:
        from model_worker.worker import READY_LINE as MODEL_READY
        from streams.worker import READY_LINE as STREAMS_READY

        ready_line = {"streams": STREAMS_READY, "model-worker": MODEL_READY, "trainer": "adapter trainer ready"}
        for name in names or self.workers:
            worker = self.workers[name]
            if not worker.wait_for_log(ready_line[name], self.cfg.start_timeout_s):
                raise RuntimeError(f"{name} did not become ready; see {worker.log_path}")

    def restart(self, name: str, *, kill: bool = False) -> None:
        """Stop (or SIGKILL) a worker and start it again with the same arguments."""
        old = self.workers[name]
        old.kill() if kill else old.stop()
        self.workers[name] = WorkerProcess(old.args, log_path=old.log_path, env=old.env).start()

    def restart_broker(self, *, kill: bool = True, down_s: float = 1.0) -> None:
        """Crash (or stop) the broker and bring it back on the same address after `down_s`."""
        if self.store is None:
            raise RuntimeError("restarting a memory-storage broker loses every topic: use durable_broker=True")
        self.broker.restart(kill=kill, down_s=down_s)

    @property
    def signing_key(self) -> bytes:
        """The stack's signing key (its workers verify adapters and retrievers signed with it)."""
        return self._signing_key.encode()

    def send(self, spec: TopicSpec, key: str | bytes, payload: bytes):
        """Publish; returns kafka-python's future (acknowledged once `.succeeded()` after a flush)."""
        if self._producer is None:
            self._producer = producer(self.kafka)
        return self._producer.send(self.topics.name(spec), key=key if isinstance(key, bytes) else key.encode(),
                            value=payload)

    def publish_products(self, products, *, wait_s: float = 180.0) -> int:
        """Publish demo-world products (vip5.demo_world.Product) and wait until the streams worker
        has published their embeddings. Returns how many embeddings were seen."""
        import time

        from runtime.kafka import read_topic
        from schemas.codec import encode
        from schemas.topics import ITEM_EMBEDDINGS, ITEMS

        now = int(time.time() * 1000)
        for product in products:
            self.send(ITEMS, product.item_id, encode(product.upsert(now)))
        self.flush()
        seen = read_topic(self.kafka, self.topics.name(ITEM_EMBEDDINGS), until=lambda ms: len(ms) >= len(products),
                          timeout_s=wait_s)
        return len(seen)

    def flush(self) -> None:
        if self._producer is not None:
            self._producer.flush()

    def __exit__(self, *exc) -> None:
        if self._producer is not None:
            self._producer.close()
            self._producer = None
        for worker in self.workers.values():
            worker.stop()
        self.broker.stop()
        if self.store is not None:
            self.store.stop()
