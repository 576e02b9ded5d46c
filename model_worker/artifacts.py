"""Adapter artifacts: versioned, checksummed, signed directories in a store (a local or shared directory).

    <root>/<version>/adapter.safetensors   the weights stage "adapt" trains (model_worker.vip5model.checkpoint)
    <root>/<version>/adapter.json          their config, backbone digest, tensor shapes
    <root>/<version>/manifest.json         version, parent_version, sha256, metrics, created_time_ms, backbone_id
    <root>/<version>/manifest.sig          hex HMAC-SHA256 of manifest.json's bytes under the signing key

A version directory appears atomically (written under a temporary name, then renamed), so a reader
never sees half an artifact. `sha256` covers adapter.safetensors then adapter.json; the manifest
binds it to the version and backbone, and the signature binds the manifest to whoever holds the
signing key (the trainer). An `AdapterUpdate` carries that signature, so anyone who can write the
adapter-updates topic but lacks the key can only point workers at versions the trainer signed.

`load_verified` accepts an update only if
- its version has the shape `v<N>` and its URI names exactly `<store root>/<version>`,
- that directory and its files are real directories and regular files (no symlinks) inside the store,
- its signature is the HMAC of that directory's manifest.json, and the manifest's version, sha256
  and backbone equal the update's, and the backbone is this model's,
- the files hash to that sha256.
The store's root is a local path by default; in production, a shared volume every worker mounts
(docker-compose.yml). The key comes from VIP5_ADAPTER_SIGNING_KEY or the file named by
VIP5_ADAPTER_SIGNING_KEY_FILE (`runtime.signing.signing_key_from_env`, called by the CLIs only).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import time
import uuid
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from model_worker.vip5model.checkpoint import AdapterArtifact, read_adapter, save_adapter
from runtime.signing import KEY_ENV, KEY_FILE_ENV, sign, verify
from schemas.errors import shorten
from schemas.records import AdapterUpdate

ARTIFACT_FILES = ("adapter.safetensors", "adapter.json")
MANIFEST, SIGNATURE = "manifest.json", "manifest.sig"
VERSION_PATTERN = re.compile(r"v[1-9][0-9]{0,8}")  # v1 ships with the model; the trainer counts up
MAX_MANIFEST_BYTES = 64 * 1024


class ArtifactError(ValueError):
    """An artifact is missing, corrupt, unsigned, outside the store or made for another backbone.

    `kind` names the check that failed (a metric label): one of REJECTIONS."""

    def __init__(self, message: str, kind: str = "invalid"):
        assert kind in REJECTIONS, kind
        super().__init__(shorten(message))
        self.kind = kind


REJECTIONS = ("invalid", "path", "signature", "backbone", "missing", "checksum", "unreadable")


def artifact_sha256(directory: Path) -> str:
    digest = hashlib.sha256()
    for name in ARTIFACT_FILES:
        with open(directory / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def check_version_name(version: str) -> str:
    if not VERSION_PATTERN.fullmatch(version):
        raise ArtifactError(f"adapter version {version!r:.40} is not of the form v<N>", "path")
    return version


class ArtifactStore:
    """The versions under `root`. `signing_key` signs what `publish` writes and verifies what
    `load_verified` reads; without it, nothing can be published or loaded."""

    def __init__(self, root: str | Path, *, signing_key: bytes | None = None):
        self.root = Path(root).resolve()
        self.signing_key = signing_key

    def uri(self, version: str) -> str:
        return (self.root / version).as_uri()

    def publish(self, model, *, version: str, parent_version: str | None, metrics: dict[str, float],
                backbone_id: str) -> AdapterUpdate:
        """Write `model`'s adapter as `version`, signed; returns the AdapterUpdate announcing it."""
        check_version_name(version)
        key = self._key()
        if (self.root / version).exists():
            raise ArtifactError(f"artifact version {version} already exists in {self.root}")
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
        save_adapter(model, tmp)
        sha256, created_time_ms = artifact_sha256(tmp), int(time.time() * 1000)
        manifest = {"version": version, "parent_version": parent_version, "sha256": sha256,
                    "metrics": metrics, "backbone_id": backbone_id, "created_time_ms": created_time_ms}
        body = json.dumps(manifest, indent=2, sort_keys=True).encode()
        signature = sign(key, body)
        (tmp / MANIFEST).write_bytes(body)
        (tmp / SIGNATURE).write_text(signature)
        try:
            os.replace(tmp, self.root / version)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return AdapterUpdate(version=version, parent_version=parent_version, artifact_uri=self.uri(version),
                             sha256=sha256, metrics=metrics, backbone_id=backbone_id,
                             created_time_ms=created_time_ms, signature=signature)

    def manifests(self) -> list[dict]:
        """Every well-formed version in the store (no symlinks, names of the version shape), oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for directory in self.root.iterdir():
            if not VERSION_PATTERN.fullmatch(directory.name):
                continue
            try:
                found.append(json.loads(_read_regular(directory, MANIFEST)))
            except (ArtifactError, ValueError):
                continue
        return sorted(found, key=lambda m: m.get("created_time_ms", 0))

    def update_for(self, version: str, *, parent_version: str | None) -> AdapterUpdate:
        """An AdapterUpdate pointing at an existing version (rollback), with the signature the
        trainer wrote for it: a rollback needs no key, and can only name versions the trainer signed."""
        manifest = next((m for m in self.manifests() if m["version"] == version), None)
        if manifest is None:
            raise ArtifactError(f"no artifact version {version} in {self.root}", "missing")
        signature = _read_regular(self.root / version, SIGNATURE).decode().strip()
        return AdapterUpdate(version=version, parent_version=parent_version, artifact_uri=self.uri(version),
                             sha256=manifest["sha256"], metrics=manifest["metrics"],
                             backbone_id=manifest["backbone_id"], created_time_ms=int(time.time() * 1000),
                             signature=signature)

    def directory_of(self, update: AdapterUpdate) -> Path:
        """`<root>/<version>` if the update's URI names exactly that, decided without the file system."""
        version = check_version_name(update.version)
        parsed = urlparse(update.artifact_uri)
        if parsed.scheme not in ("", "file") or parsed.netloc or parsed.query or parsed.fragment:
            raise ArtifactError(f"adapter {version}: the artifact URI must be a local path in the store", "path")
        path = PurePosixPath(unquote(parsed.path))
        if "\x00" in str(path) or ".." in path.parts or path != PurePosixPath(self.root / version):
            raise ArtifactError(f"adapter {version}: the artifact URI must name <store>/{version}", "path")
        return self.root / version

    def _key(self) -> bytes:
        if self.signing_key is None:
            raise ArtifactError(f"no adapter signing key: set {KEY_ENV} or {KEY_FILE_ENV}", "signature")
        return self.signing_key


def _read_regular(directory: Path, name: str, max_bytes: int = MAX_MANIFEST_BYTES) -> bytes:
    """A small file of a version directory; neither may be a symlink (O_NOFOLLOW on both)."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as err:
        raise ArtifactError(f"no version directory {directory.name}", "missing") from err
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as err:
        raise ArtifactError(f"{directory.name}: no {name}", "missing") from err
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ArtifactError(f"{directory.name}: {name} is not a regular file", "path")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ArtifactError(f"{directory.name}: {name} is larger than {max_bytes} bytes", "invalid")
    return data


def _check_real_files(directory: Path) -> None:
    """The version directory and its artifact files are themselves, not symlinks to elsewhere."""
    for path in (directory, *(directory / name for name in ARTIFACT_FILES)):
        try:
            mode = os.lstat(path).st_mode
        except OSError as err:
            raise ArtifactError(f"adapter {directory.name}: missing {path.name}", "missing") from err
        wanted = stat.S_ISDIR if path == directory else stat.S_ISREG
        if not wanted(mode):
            raise ArtifactError(f"adapter {directory.name}: {path.name} is a symlink or special file", "path")


def load_verified(update: AdapterUpdate, *, backbone_id: str, store: ArtifactStore) -> AdapterArtifact:
    """The artifact an update names, after every check in the module doc; ArtifactError otherwise."""
    directory = store.directory_of(update)
    if update.backbone_id != backbone_id:
        raise ArtifactError(f"adapter {update.version} is for backbone {update.backbone_id[:12]}, "
                            f"this model is {backbone_id[:12]}", "backbone")
    key = store._key()
    _check_real_files(directory)
    body = _read_regular(directory, MANIFEST)
    if update.signature is None:
        raise ArtifactError(f"adapter {update.version}: unsigned update", "signature")
    if not verify(key, body, update.signature):
        raise ArtifactError(f"adapter {update.version}: signature does not match the manifest", "signature")
    try:
        manifest = json.loads(body)
        announced = (manifest["version"], manifest["sha256"], manifest["backbone_id"])
    except (ValueError, KeyError, TypeError) as err:
        raise ArtifactError(f"adapter {update.version}: unreadable manifest", "invalid") from err
    if announced != (update.version, update.sha256, update.backbone_id):
        raise ArtifactError(f"adapter {update.version}: the update does not match the signed manifest "
                            f"(version {str(manifest['version'])[:20]!r})", "invalid")
    found = artifact_sha256(directory)
    if found != update.sha256:
        raise ArtifactError(f"adapter {update.version}: sha256 {found[:12]} != announced {update.sha256[:12]}",
                            "checksum")
    try:
        return read_adapter(directory)
    except Exception as err:  # safetensors/json errors on a corrupt file that still matched? report uniformly
        raise ArtifactError(f"adapter {update.version}: unreadable ({type(err).__name__})", "unreadable") from None
