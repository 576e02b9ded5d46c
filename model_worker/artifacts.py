"""Adapter artifacts: versioned, checksummed directories in a store (a local or shared directory).

    <root>/<version>/adapter.safetensors   the weights stage "adapt" trains (model_worker.vip5.checkpoint)
    <root>/<version>/adapter.json          their config, backbone digest, tensor shapes
    <root>/<version>/manifest.json         version, parent_version, sha256, metrics, created_time_ms, backbone_id

A version directory appears atomically (written under a temporary name, then renamed), so a reader
never sees half an artifact. `sha256` covers adapter.safetensors then adapter.json; a reader
verifies it and the backbone identity before any weight reaches a model. The store's root is a
local path by default; in production, a shared volume every worker mounts (docker-compose.yml).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

from model_worker.vip5.checkpoint import AdapterArtifact, read_adapter, save_adapter
from schemas.records import AdapterUpdate

ARTIFACT_FILES = ("adapter.safetensors", "adapter.json")


class ArtifactError(ValueError):
    """An artifact is missing, corrupt or made for another backbone."""


def artifact_sha256(directory: Path) -> str:
    digest = hashlib.sha256()
    for name in ARTIFACT_FILES:
        with open(directory / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def path_of(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise ArtifactError(f"unsupported artifact URI scheme {parsed.scheme!r} in {uri}")
    return Path(unquote(parsed.path))


class ArtifactStore:
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    def uri(self, version: str) -> str:
        return (self.root / version).as_uri()

    def publish(self, model, *, version: str, parent_version: str | None, metrics: dict[str, float],
                backbone_id: str) -> AdapterUpdate:
        """Write `model`'s adapter as `version`; returns the AdapterUpdate announcing it."""
        if (self.root / version).exists():
            raise ArtifactError(f"artifact version {version} already exists in {self.root}")
        tmp = self.root / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
        save_adapter(model, tmp)
        update = AdapterUpdate(version=version, parent_version=parent_version, artifact_uri=self.uri(version),
                               sha256=artifact_sha256(tmp), metrics=metrics, backbone_id=backbone_id,
                               created_time_ms=int(time.time() * 1000))
        manifest = {"version": version, "parent_version": parent_version, "sha256": update.sha256,
                    "metrics": metrics, "backbone_id": backbone_id, "created_time_ms": update.created_time_ms}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        try:
            os.replace(tmp, self.root / version)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return update

    def manifests(self) -> list[dict]:
        """Every version in the store, oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for directory in self.root.iterdir():
            path = directory / "manifest.json"
            if directory.is_dir() and not directory.name.startswith(".tmp-") and path.exists():
                found.append(json.loads(path.read_text()))
        return sorted(found, key=lambda m: m["created_time_ms"])

    def update_for(self, version: str, *, parent_version: str | None) -> AdapterUpdate:
        """An AdapterUpdate pointing at an existing version (rollback)."""
        manifest = next((m for m in self.manifests() if m["version"] == version), None)
        if manifest is None:
            raise ArtifactError(f"no artifact version {version} in {self.root}")
        return AdapterUpdate(version=version, parent_version=parent_version, artifact_uri=self.uri(version),
                             sha256=manifest["sha256"], metrics=manifest["metrics"],
                             backbone_id=manifest["backbone_id"], created_time_ms=int(time.time() * 1000))


def load_verified(update: AdapterUpdate, *, backbone_id: str) -> AdapterArtifact:
    """The artifact an update names, after checking backbone identity, presence and checksum."""
    if update.backbone_id != backbone_id:
        raise ArtifactError(f"adapter {update.version} is for backbone {update.backbone_id[:12]}, "
                            f"this model is {backbone_id[:12]}")
    directory = path_of(update.artifact_uri)
    missing = [name for name in ARTIFACT_FILES if not (directory / name).is_file()]
    if missing:
        raise ArtifactError(f"adapter {update.version}: missing {missing} at {directory}")
    found = artifact_sha256(directory)
    if found != update.sha256:
        raise ArtifactError(f"adapter {update.version}: sha256 {found[:12]} != announced {update.sha256[:12]}")
    try:
        return read_adapter(directory)
    except Exception as err:  # safetensors/json errors on a corrupt file that still matched? report uniformly
        raise ArtifactError(f"adapter {update.version}: unreadable ({err})") from None
