"""A local S3-compatible object store for the embedded broker's durable storage.

    with LocalObjectStore() as store:                 # moto's S3 server on a free 127.0.0.1 port
        BrokerConfig(storage_url=store.storage_url, storage_env=store.env)

Tansu keeps topics, offsets and group state in the object store (`s3://BUCKET/`), so the broker
process can crash or restart and come back with every acknowledged record. The store is its own
process (`python -m moto.server`), like a real object store beside the broker, so nothing in the
caller's process can slow it down. moto (a dev dependency: `pip install -e .[dev]`) keeps its
objects in memory: data outlives broker restarts, not the store. Production points `s3://` at a
real S3-compatible service with the AWS_* variables of `env` (see the README).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid
from dataclasses import dataclass

from vip5.broker import free_port, wait_for_port

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ObjectStoreConfig:
    host: str = "127.0.0.1"
    port: int = 0  # 0 picks a free port
    bucket: str | None = None  # None: a fresh bucket per store
    access_key: str = "local"
    secret_key: str = "local"
    region: str = "us-east-1"
    startup_timeout_s: float = 30.0


class LocalObjectStore:
    """moto's S3 server as a child process, with the broker's bucket created."""

    def __init__(self, config: ObjectStoreConfig = ObjectStoreConfig()):
        self.config = config
        self.port = config.port or free_port(config.host)
        self.bucket = config.bucket or f"tansu-{uuid.uuid4().hex[:12]}"
        self._process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def storage_url(self) -> str:
        return f"s3://{self.bucket}/"

    @property
    def env(self) -> dict[str, str]:
        """What the broker needs to reach this store (and never a public AWS endpoint)."""
        cfg = self.config
        return {"AWS_ENDPOINT": self.endpoint, "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": cfg.access_key,
                "AWS_SECRET_ACCESS_KEY": cfg.secret_key, "AWS_DEFAULT_REGION": cfg.region,
                "AWS_REGION": cfg.region, "AWS_EC2_METADATA_DISABLED": "true"}

    def start(self) -> LocalObjectStore:
        import importlib.util

        if importlib.util.find_spec("moto") is None:
            raise RuntimeError("the local object store needs moto: pip install 'moto[s3]' flask flask-cors")
        cfg = self.config
        self._process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", cfg.host, "-p", str(self.port)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        if not wait_for_port(cfg.host, self.port, cfg.startup_timeout_s):
            self.stop()
            raise RuntimeError(f"the object store did not listen on {self.endpoint} within {cfg.startup_timeout_s}s")
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=cfg.access_key,
                              aws_secret_access_key=cfg.secret_key, region_name=cfg.region)
        client.create_bucket(Bucket=self.bucket)
        log.info("object store on %s (bucket %s)", self.endpoint, self.bucket)
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> LocalObjectStore:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
