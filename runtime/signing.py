"""The deployment's signing key and HMAC-SHA256 signatures: what a trainer signs, workers verify.

    environment (VIP5_ADAPTER_SIGNING_KEY, or a file named by VIP5_ADAPTER_SIGNING_KEY_FILE)
        ──► signing_key_from_env ──► key bytes (or None)
    key, body bytes ──► sign ──► 64 hex digits;  key, body, signature ──► verify ──► bool

One key signs everything a worker loads from a topic and runs: adapter versions
(`model_worker.artifacts`) and learned retrievers (`index.retriever`). Anyone who can write those
topics but lacks the key can only repeat what the key holder published.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from pathlib import Path

MIN_KEY_BYTES = 16
KEY_ENV, KEY_FILE_ENV = "VIP5_ADAPTER_SIGNING_KEY", "VIP5_ADAPTER_SIGNING_KEY_FILE"


def signing_key_from_env(environ: Mapping[str, str]) -> bytes | None:
    """The signing key: VIP5_ADAPTER_SIGNING_KEY, or the contents of the file named by
    VIP5_ADAPTER_SIGNING_KEY_FILE (a mounted secret); None when neither is set."""
    value, path = environ.get(KEY_ENV) or None, environ.get(KEY_FILE_ENV) or None
    if value and path:
        raise ValueError(f"set {KEY_ENV} or {KEY_FILE_ENV}, not both")
    if path:
        value = Path(path).read_text().strip()
    if value is None:
        return None
    key = value.encode()
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the signing key must have at least {MIN_KEY_BYTES} bytes, got {len(key)}")
    return key


def sign(key: bytes, body: bytes) -> str:
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def verify(key: bytes, body: bytes, signature: str | None) -> bool:
    """True when `signature` is `sign(key, body)` (compared in constant time)."""
    return signature is not None and hmac.compare_digest(sign(key, body), signature)
