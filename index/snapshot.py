"""Atomic snapshot directories: write everything to a temporary folder, then flip a pointer.

Layout under a snapshot root:
    CURRENT             the name of the live snapshot folder (replaced with os.replace)
    snap-<ns>/          meta.json (with a sha256 per file) and one .npy per array
A reader sees either the old or the new snapshot, never a half-written one; a crash while writing
leaves only a `.tmp-*` folder that the next write removes. Older snapshots are pruned after a flip.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

POINTER = "CURRENT"
FORMAT = "vip5-item-index/1"


def write_snapshot(root: str | Path, arrays: dict[str, np.ndarray], meta: dict, *, keep: int = 1) -> Path:
    """Write `arrays` and `meta` as a new snapshot under `root`, make it current, return its folder."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    name = f"snap-{time.time_ns()}"
    tmp = root / f".tmp-{name}"
    tmp.mkdir()
    digests = {}
    for key, array in arrays.items():
        path = tmp / f"{key}.npy"
        with open(path, "wb") as f:
            np.save(f, array, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        digests[path.name] = _sha256(path)
    _write_json(tmp / "meta.json", {**meta, "format": FORMAT, "files": digests})
    os.replace(tmp, root / name)
    _write_json(root / f"{POINTER}.tmp", {"current": name})
    os.replace(root / f"{POINTER}.tmp", root / POINTER)
    _fsync_dir(root)
    _prune(root, keep=keep, current=name)
    return root / name


def read_snapshot(root: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, arrays) of the current snapshot under `root`; checks format and every checksum."""
    root = Path(root)
    pointer = root / POINTER
    if not pointer.exists():
        raise FileNotFoundError(f"no snapshot under {root} (missing {POINTER})")
    folder = root / json.loads(pointer.read_text())["current"]
    meta = json.loads((folder / "meta.json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{folder}: format {meta.get('format')!r}, expected {FORMAT!r}")
    arrays = {}
    for filename, digest in meta["files"].items():
        path = folder / filename
        if _sha256(path) != digest:
            raise ValueError(f"{path}: checksum mismatch, snapshot is corrupt")
        arrays[filename.removesuffix(".npy")] = np.load(path, allow_pickle=False)
    return meta, arrays


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json(path: Path, payload: dict) -> None:
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune(root: Path, *, keep: int, current: str) -> None:
    older = sorted(p for p in root.glob("snap-*") if p.name != current)
    for folder in older[: max(len(older) - (keep - 1), 0)]:
        shutil.rmtree(folder, ignore_errors=True)
