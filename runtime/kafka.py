"""Kafka clients for every component, from one `KafkaConfig`: producer, consumer, admin, and the
broker credentials (SASL, TLS context) of the faust app.

Security settings (TLS, SASL) are passed to every client unchanged. Defaults target a broker on
127.0.0.1; `KafkaConfig.from_env()` reads `VIP5_KAFKA_*` (only CLI code calls it).

Values are raw bytes on these clients: records are encoded/decoded by `schemas.codec` in the
worker loop, so a record that fails to decode can go to the dead-letter topic instead of
raising inside the client.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass

from schemas.limits import LIMITS
from schemas.topics import ALL_TOPICS, TopicConfig, TopicSpec

log = logging.getLogger(__name__)

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "vip5"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None  # PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    # The embedded broker joins groups in about session/2 (see vip5.broker); 6 s keeps tests quick.
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 2_000
    max_poll_interval_ms: int = 300_000
    request_timeout_ms: int = 30_000
    # Longest time the broker may hold a fetch that finds no new data. Every consumer here (the
    # kafka-python ones and faust's aiokafka one) uses it. Tansu answers a waiting fetch when this
    # wait expires, not when data arrives, so each hop costs up to this much: one hop measured p50
    # 127 ms at kafka-python's default 500, 4.6 ms at 10. Apache Kafka answers on arrival either way;
    # a small value only costs idle consumers a fetch request per wait.
    fetch_max_wait_ms: int = 10
    # The same wait for the replica tails (item embeddings, adapter updates, retriever vectors and
    # models: `tail_consumer`). Those topics change rarely and a change a quarter second later is
    # fine; at 10 ms every idle tail would cost its process (and the broker) 100 fetches a second.
    replica_fetch_max_wait_ms: int = 250
    # Producer batching delay. 0: a record is sent as soon as the sender thread sees it (records
    # that arrive while a request is in flight still share the next one).
    producer_linger_ms: int = 0
    # When the broker goes away: reconnect attempts back off exponentially (with jitter) from
    # reconnect_backoff_ms to reconnect_backoff_max_ms; a produced record is retried until
    # delivery_timeout_ms, and only then reported failed (workers never commit past a failed send).
    reconnect_backoff_ms: int = 50
    reconnect_backoff_max_ms: int = 5_000
    delivery_timeout_ms: int = 120_000
    # Broker-side producer idempotence. Off by default: every consumer here tolerates repeats
    # (ids derived from events), and Tansu persists a producer's sequence number before the
    # records, so after a broker crash a retried batch is answered "duplicate" (which clients
    # count as delivered) although it was never stored. Turn on for Apache Kafka if you like.
    idempotent_producer: bool = False
    max_message_bytes: int = LIMITS.max_message_bytes

    def __post_init__(self) -> None:
        if not self.bootstrap_servers.strip():
            raise ValueError("bootstrap_servers: must name at least one host:port")
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ValueError(f"security_protocol: {self.security_protocol!r} not in {SECURITY_PROTOCOLS}")
        if self.security_protocol.startswith("SASL") and not self.sasl_mechanism:
            raise ValueError("sasl_mechanism: required with a SASL security_protocol")
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms: must be at most a third of session_timeout_ms")
        if self.reconnect_backoff_max_ms < self.reconnect_backoff_ms:
            raise ValueError("reconnect_backoff_max_ms: must be at least reconnect_backoff_ms")
        if self.delivery_timeout_ms < self.request_timeout_ms:
            raise ValueError("delivery_timeout_ms: must be at least request_timeout_ms")
        if not 0 <= self.fetch_max_wait_ms < self.request_timeout_ms:
            raise ValueError("fetch_max_wait_ms: must be >= 0 and below request_timeout_ms")
        if not 0 <= self.replica_fetch_max_wait_ms < self.request_timeout_ms:
            raise ValueError("replica_fetch_max_wait_ms: must be >= 0 and below request_timeout_ms")
        if self.producer_linger_ms < 0:
            raise ValueError("producer_linger_ms: must be >= 0")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides) -> KafkaConfig:
        """Read `VIP5_KAFKA_<FIELD>` variables (e.g. VIP5_KAFKA_BOOTSTRAP_SERVERS)."""
        environ = os.environ if environ is None else environ
        values = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(f"VIP5_KAFKA_{f.name.upper()}")
            if raw:  # unset or empty (compose passes unset variables as ""): keep the default
                values[f.name] = _parse(raw, f.type, f.name)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def replace(self, **changes) -> KafkaConfig:
        return dataclasses.replace(self, **changes)

    def common(self) -> dict:
        """Connection and security settings shared by every kafka-python client."""
        settings = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
            "reconnect_backoff_ms": self.reconnect_backoff_ms,
            "reconnect_backoff_max_ms": self.reconnect_backoff_max_ms,
        }
        optional = {
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_plain_username": self.sasl_username,
            "sasl_plain_password": self.sasl_password,
            "ssl_cafile": self.ssl_cafile,
            "ssl_certfile": self.ssl_certfile,
            "ssl_keyfile": self.ssl_keyfile,
        }
        settings.update({k: v for k, v in optional.items() if v is not None})
        return settings

    def faust_broker_url(self) -> str:
        return ";".join(f"kafka://{host}" for host in self.bootstrap_servers.split(","))


def _parse(raw: str, type_name: str, name: str):
    if type_name == "int":
        return int(raw)
    if type_name == "bool":
        if raw.lower() not in ("1", "true", "yes", "0", "false", "no"):
            raise ValueError(f"VIP5_KAFKA_{name.upper()}: expected true/false, got {raw!r}")
        return raw.lower() in ("1", "true", "yes")
    return raw


def faust_credentials(cfg: KafkaConfig):
    """faust's `broker_credentials` for `cfg`: None (PLAINTEXT), an SSL context, or SASL credentials."""
    if cfg.security_protocol == "PLAINTEXT":
        return None
    context = ssl_context(cfg) if cfg.security_protocol.endswith("SSL") else None
    if cfg.security_protocol.startswith("SASL"):
        import faust

        return faust.SASLCredentials(username=cfg.sasl_username, password=cfg.sasl_password,
                                     mechanism=cfg.sasl_mechanism, ssl_context=context)
    return context


def ssl_context(cfg: KafkaConfig):
    """A TLS client context trusting `ssl_cafile` (system CAs when None), with the client certificate if set."""
    import ssl

    context = ssl.create_default_context(cafile=cfg.ssl_cafile)
    if cfg.ssl_certfile:
        context.load_cert_chain(cfg.ssl_certfile, cfg.ssl_keyfile)
    return context


def producer(cfg: KafkaConfig, **overrides):
    from kafka import KafkaProducer

    settings = {"acks": "all", "linger_ms": cfg.producer_linger_ms, "max_request_size": cfg.max_message_bytes,
                "delivery_timeout_ms": cfg.delivery_timeout_ms, "enable_idempotence": cfg.idempotent_producer,
                **cfg.common(), **overrides}
    return KafkaProducer(**settings)


def consumer(cfg: KafkaConfig, group_id: str | None, topics: list[str] | None = None, **overrides):
    """A consumer with manual commits (commit after output is produced: at-least-once)."""
    from kafka import KafkaConsumer

    settings = {
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": cfg.session_timeout_ms,
        "heartbeat_interval_ms": cfg.heartbeat_interval_ms,
        "max_poll_interval_ms": cfg.max_poll_interval_ms,
        "fetch_max_bytes": max(cfg.max_message_bytes, 52_428_800),
        "max_partition_fetch_bytes": cfg.max_message_bytes,
        "fetch_max_wait_ms": cfg.fetch_max_wait_ms,
        **cfg.common(),
        **overrides,
    }
    client = KafkaConsumer(**settings)
    if topics:
        client.subscribe(topics)
    return client


def tail_consumer(cfg: KafkaConfig):
    """A consumer outside any group for a replica tail (`runtime.tail.TopicTail`): it waits up to
    `replica_fetch_max_wait_ms` for data, so an idle tail costs next to nothing."""
    return consumer(cfg, None, fetch_max_wait_ms=cfg.replica_fetch_max_wait_ms)


def admin(cfg: KafkaConfig):
    from kafka import KafkaAdminClient

    return KafkaAdminClient(**cfg.common())


def create_topics(cfg: KafkaConfig, topics: TopicConfig, specs: tuple[TopicSpec, ...] = ALL_TOPICS) -> dict:
    """Create the registry's topics; existing ones are left as they are. Returns name -> status."""
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    client = admin(cfg)
    try:
        existing = set(client.list_topics())
        status = {}
        for spec in specs:
            name = topics.name(spec)
            if name in existing:
                status[name] = "exists"
                continue
            new = NewTopic(name, num_partitions=topics.partitions_of(spec),
                           replication_factor=topics.replication_factor,
                           topic_configs=topics.topic_configs(spec))
            try:
                client.create_topics([new])
                status[name] = "created"
            except TopicAlreadyExistsError:  # raced with another creator
                status[name] = "exists"
        log.info("topics: %s", status)
        return status
    finally:
        client.close()


def read_topic(cfg: KafkaConfig, topic: str, *, until=None, timeout_s: float = 30.0, idle_s: float | None = None):
    """Every message of `topic` from the beginning, outside any group (tests, benches, demo).

    Stops when `until(messages)` holds, when nothing arrived for `idle_s` (if given) after at
    least one message, or at `timeout_s`. Returns the kafka-python ConsumerRecords read.
    """
    import time

    from kafka import TopicPartition

    client = consumer(cfg, None)
    messages, deadline, last = [], time.monotonic() + timeout_s, time.monotonic()
    try:
        partitions = None
        while not partitions and time.monotonic() < deadline:
            partitions = client.partitions_for_topic(topic)
            if not partitions:
                time.sleep(0.2)
        if not partitions:
            return messages
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        client.assign(tps)
        client.seek_to_beginning(*tps)
        while time.monotonic() < deadline and not (until and until(messages)):
            batch = client.poll(timeout_ms=200)
            for records in batch.values():
                messages.extend(records)
            if batch:
                last = time.monotonic()
            elif idle_s is not None and time.monotonic() - last > idle_s:
                break
        return messages
    finally:
        client.close()
