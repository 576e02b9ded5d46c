"""The candidate index: item ids (str) to unit vectors, top-K inner-product search, snapshots.

In:  `upsert(ids (N), vectors (N, D))`, `remove(ids)`, `rebuild(records)` where a record has
     `.item_id: str` and `.vector: (D,) | None` (None deletes, as a compacted-topic tombstone).
Out: `search(queries (B, D), k)` -> B lists of `Hit(item_id, score)`, best first, at most k each,
     never an id from that query's `exclude`; `get_vectors(ids)` -> {id: (D,) float32}.

Exact (flat) below `IndexConfig.approx_min_items`, then the configured approximate kind (IVF or
HNSW). The switch, IVF re-training after 4x growth and HNSW tombstone compaction start when a write
crosses the line and run in a background thread on a copy; writes made meanwhile are journalled
and replayed before the new index is swapped in, so searches and writes never wait for a rebuild.
The index keeps its own copy of every vector (rows of one array), so rebuilds and `get_vectors`
never depend on what a faiss index can reconstruct. Thread-safe: searches share a read lock,
writes take the write lock (faiss searches release the GIL).

Memory: about 2 x N x D x 4 bytes (own copy + faiss), plus the ids; 1M x 256 is about 2.5 GB.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from index import faiss_backend as fb
from index.rwlock import RWLock
from index.snapshot import read_snapshot, write_snapshot

log = logging.getLogger(__name__)
IVF_RETRAIN_GROWTH = 4  # re-train IVF lists once the catalogue is this many times its training size
ADD_CHUNK = 65_536  # vectors per faiss add call (bounds temporary memory)


@dataclass(frozen=True)
class IndexConfig:
    """Shape and kind of the item index. Every field is validated on construction."""

    dim: int  # D, must equal the encoder's dim
    kind: str = "ivf"  # "flat" (always exact), "ivf" or "hnsw" (approximate from approx_min_items on)
    # Below this many items the index stays exact (see `choose_kind`). Measured with
    # `vip5 bench index` (D=256, clustered vectors, shared 2-core box, one faiss thread): exact
    # search costs p50 0.19 ms at 10k, 2.8 ms at 50k, 5.3 ms at 100k; IVF at nprobe 16-32 reaches
    # recall@100 0.98 in 0.3 ms at 100k, but nprobe 32 gives only 0.79 at 50k and 0.88 at 70k, where
    # recall >= 0.95 needs nprobe 128-256 (1.2-1.6 ms) and is then barely faster than exact.
    approx_min_items: int = 100_000
    ivf_nlist: int | None = None  # IVF lists; None: about 2 * sqrt(N) at training time
    # IVF lists visited per query. At 100k (632 lists) nprobe 16 gives recall@100 0.979 at p50 0.29 ms,
    # p99 0.56 ms through `search`; 32 gives 0.986 but p99 1.0-1.6 ms on the shared 2-core box.
    ivf_nprobe: int = 16
    hnsw_m: int = 32  # HNSW links per node
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128  # raised to the fetch size when that is larger
    max_dead_fraction: float = 0.2  # HNSW: compact when tombstones exceed this share of live items
    normalize: bool = True  # L2-normalise stored vectors and queries (inner product = cosine)
    use_gpu: bool | None = None  # None: a GPU copy for search when faiss sees a GPU (flat/ivf only)
    background_reorganise: bool = True  # switch kind / re-train / compact in a thread; writes go on

    def __post_init__(self) -> None:
        checks = {
            "dim": self.dim >= 1,
            "kind": self.kind in fb.KINDS,
            "approx_min_items": self.approx_min_items >= 1,
            "ivf_nlist": self.ivf_nlist is None or self.ivf_nlist >= 1,
            "ivf_nprobe": self.ivf_nprobe >= 1,
            "hnsw_m": 4 <= self.hnsw_m <= 256,
            "hnsw_ef_construction": self.hnsw_ef_construction >= 1,
            "hnsw_ef_search": self.hnsw_ef_search >= 1,
            "max_dead_fraction": 0.0 < self.max_dead_fraction <= 1.0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"IndexConfig.{name} is invalid: {getattr(self, name)!r} (kinds: {fb.KINDS})")


class Hit(NamedTuple):
    item_id: str
    score: float  # inner product; cosine similarity when normalize=True


@dataclass
class _State:
    """Everything one index generation holds; rebuilds make a new one and swap it in."""

    kind: str  # the backend in use now ("flat" until the approximate threshold)
    index: Any
    vectors: np.ndarray  # (capacity, D) float32; row slot_of[id] is id's vector
    slot_of: dict[str, int] = field(default_factory=dict)
    label_of: dict[str, int] = field(default_factory=dict)  # id -> faiss label
    item_of: dict[int, str] = field(default_factory=dict)  # live faiss label -> id
    free_slots: list[int] = field(default_factory=list)
    dead: set[int] = field(default_factory=set)  # HNSW tombstones
    next_label: int = 0
    trained_on: int = 0  # IVF: catalogue size when the lists were trained
    dead_selector_cache: np.ndarray | None = None

    def dead_array(self) -> np.ndarray | None:
        if not self.dead:
            return None
        if self.dead_selector_cache is None:
            self.dead_selector_cache = np.fromiter(self.dead, dtype=np.int64, count=len(self.dead))
        return self.dead_selector_cache


class ItemIndex:
    def __init__(self, config: IndexConfig):
        self.config = config
        self._lock = RWLock()
        self._gpu_lock = threading.Lock()
        self._gpu_index = None  # (kind, GPU copy) or None when stale
        self._gpu_resources = None
        gpus = fb.gpu_count() if config.use_gpu is not False else 0
        if config.use_gpu and not gpus:
            raise ValueError("IndexConfig.use_gpu is True but faiss sees no GPU (faiss-gpu and a CUDA device needed)")
        self._use_gpu = gpus > 0
        self._state = _build_state(config, [], np.zeros((0, config.dim), np.float32))
        self._generation = 0  # bumped on every swap of the whole state
        self._reorganiser: threading.Thread | None = None
        self._journal: set[str] | None = None  # ids written while a background rebuild runs

    # ---- writes -------------------------------------------------------------------------------

    def upsert(self, item_ids: Sequence[str], vectors: np.ndarray) -> int:
        """Add new items or replace the vectors of existing ones; the last duplicate wins."""
        ids, rows = _dedup_last(list(item_ids), self._prepare(vectors, len(item_ids)))
        with self._lock.write():
            _state_upsert(self._state, ids, rows)
            self._after_write(ids)
        return len(ids)

    def remove(self, item_ids: Iterable[str]) -> int:
        """Remove items; unknown ids are ignored. Returns how many were present."""
        with self._lock.write():
            present = _state_remove(self._state, item_ids)
            self._after_write(present)
        return len(present)

    def rebuild(self, records: Iterable[Any], *, encoder_id: str | None = None) -> int:
        """Replace the whole content with `records` (`.item_id`, `.vector`, None deletes); last wins.

        With `encoder_id`, records carrying another `.encoder_id` are skipped (vectors from another
        model live in another space) and counted in the log.
        """
        latest: dict[str, np.ndarray | None] = {}
        skipped = 0
        for record in records:
            if encoder_id is not None and getattr(record, "encoder_id", encoder_id) != encoder_id:
                skipped += 1
                continue
            latest[record.item_id] = None if record.vector is None else np.asarray(record.vector, np.float32)
        ids = [i for i, v in latest.items() if v is not None]
        if skipped:
            log.warning("rebuild skipped %d records from an encoder other than %s", skipped, encoder_id)
        return self.replace_all(ids, np.stack([latest[i] for i in ids]) if ids else np.zeros((0, self.config.dim)))

    def replace_all(self, item_ids: Sequence[str], vectors: np.ndarray) -> int:
        """Bulk load: the index holds exactly `item_ids` -> `vectors` (N, D) afterwards."""
        ids, rows = _dedup_last(list(item_ids), self._prepare(vectors, len(item_ids)))
        state = _build_state(self.config, ids, rows)  # built outside the lock: searches go on
        self._swap(state, generation=None)
        log.info("item index loaded: %d items, kind %s", len(ids), state.kind)
        return len(ids)

    def compact(self) -> None:
        """Rebuild from the stored vectors now (drops HNSW tombstones, re-trains IVF); writes go on."""
        with self._lock.write():
            if self._reorganiser is None:
                self._start_reorganiser()
        self.wait_for_reorganise()

    def wait_for_reorganise(self, timeout_s: float | None = None) -> bool:
        """Block until a background reorganisation (if any) has been swapped in; False on timeout."""
        thread = self._reorganiser
        if thread is not None:
            thread.join(timeout_s)
            return not thread.is_alive()
        return True

    def _after_write(self, touched: Iterable[str]) -> None:
        """Under the write lock: journal for a running reorganisation, start one when due."""
        self._gpu_index = None
        if self._journal is not None:
            self._journal.update(touched)
        if self._reorganiser is not None or not _reorganise_due(self._state, self.config):
            return
        if self.config.background_reorganise:
            self._start_reorganiser()
        else:
            st = self._state
            log.info("item index reorganising at %d items (was %s)", len(st.slot_of), st.kind)
            self._state = _build_state(self.config, *_live(st))

    def _start_reorganiser(self) -> None:
        self._reorganiser = threading.Thread(target=self._reorganise, name="item-index-reorganise", daemon=True)
        self._reorganiser.start()

    def _reorganise(self) -> None:
        """Background: rebuild from a copy, then replay the writes made meanwhile and swap."""
        with self._lock.read():  # no writer runs, so the copy and the journal start together
            st, generation = self._state, self._generation
            ids, vectors = _live(st)
            self._journal = set()
        log.info("item index reorganising in the background at %d items (was %s)", len(ids), st.kind)
        try:
            state = _build_state(self.config, ids, vectors)
        except Exception:
            log.exception("item index reorganisation failed; keeping the current index")
            with self._lock.write():
                self._journal, self._reorganiser = None, None
            raise
        self._swap(state, generation=generation)

    def _swap(self, state: _State, *, generation: int | None) -> None:
        """Make `state` current. With `generation`, replay the journal, and drop `state` if the
        content was replaced wholesale since it was copied."""
        with self._lock.write():
            if generation is not None:
                journal, self._journal, self._reorganiser = self._journal or set(), None, None
                if generation != self._generation:
                    return
                current = self._state
                alive = [i for i in journal if i in current.slot_of]
                _state_remove(state, [i for i in journal if i not in current.slot_of])
                _state_upsert(state, alive, current.vectors[[current.slot_of[i] for i in alive]])
            self._state = state
            self._generation += 1
            self._gpu_index = None

    def _prepare(self, vectors: np.ndarray, n: int) -> np.ndarray:
        """(N, D) float32 rows, checked and (with normalize) unit length; a single (D,) is one row."""
        rows = np.asarray(vectors, dtype=np.float32)
        if n == 0 and rows.size == 0:
            return np.zeros((0, self.config.dim), np.float32)
        if rows.ndim == 1 and n == 1:
            rows = rows[None]
        if rows.shape != (n, self.config.dim):
            raise ValueError(f"vectors must have shape ({n}, {self.config.dim}), got {np.shape(vectors)}")
        if not np.isfinite(rows).all():
            raise ValueError("vectors contain NaN or inf")
        if self.config.normalize:
            norms = np.linalg.norm(rows, axis=1, keepdims=True)
            if (norms == 0).any():
                raise ValueError("zero vector cannot be normalised")
            rows = rows / norms
        return np.ascontiguousarray(rows)

    # ---- reads --------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int, *, exclude: Sequence[Collection[str]] | None = None) -> list[list[Hit]]:
        """Top-k per query row. `exclude[b]`: ids never returned for query b (e.g. seen items)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = np.asarray(queries, dtype=np.float32)
        q = q[None] if q.ndim == 1 else q
        if q.ndim != 2 or q.shape[1] != self.config.dim:
            raise ValueError(f"queries must have shape (B, {self.config.dim}), got {np.shape(queries)}")
        if self.config.normalize:
            q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        excluded = [set(e) for e in exclude] if exclude is not None else [set()] * len(q)
        if len(excluded) != len(q):
            raise ValueError(f"exclude has {len(excluded)} entries for {len(q)} queries")
        gpu = self._gpu_copy() if self._use_gpu else None
        with self._lock.read():
            st = self._state
            kind, searchable = gpu or (st.kind, st.index)
            fetch = k + max((sum(i in st.label_of for i in e) for e in excluded), default=0)
            scores, labels = fb.search(searchable, q, fetch, kind=kind, dead=st.dead_array(),
                                       nprobe=self.config.ivf_nprobe, ef_search=self.config.hnsw_ef_search)
            return [_hits(st, s, lab, e, k) for s, lab, e in zip(scores, labels, excluded, strict=True)]

    def search_one(self, query: np.ndarray, k: int, *, exclude: Collection[str] = ()) -> list[Hit]:
        return self.search(np.asarray(query)[None], k, exclude=[exclude])[0]

    def get_vectors(self, item_ids: Iterable[str]) -> dict[str, np.ndarray]:
        """Copies of the stored (normalised) vectors of the ids present; missing ids are left out."""
        with self._lock.read():
            st = self._state
            present = [i for i in item_ids if i in st.slot_of]
            rows = st.vectors[[st.slot_of[i] for i in present]]  # one copy of all the rows
        return dict(zip(present, rows, strict=True))

    def ids(self) -> list[str]:
        with self._lock.read():
            return list(self._state.slot_of)

    def __len__(self) -> int:
        return len(self._state.slot_of)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._state.slot_of

    def stats(self) -> dict:
        with self._lock.read():
            st = self._state
            return {"items": len(st.slot_of), "kind": st.kind, "dim": self.config.dim, "tombstones": len(st.dead),
                    "faiss_ntotal": int(st.index.ntotal), "gpu": self._use_gpu}

    def _gpu_copy(self) -> tuple[str, Any] | None:
        """(kind, GPU search copy), re-copied on the first search after a write; None for HNSW.

        A search racing a write may use the previous copy: labels are never reused, so its hits
        are either still valid or dropped when mapped back to ids.
        """
        with self._gpu_lock:
            if self._gpu_index is None:
                with self._lock.read():
                    if self._state.kind == "hnsw":
                        return None
                    self._gpu_resources = self._gpu_resources or fb.gpu_resources()
                    self._gpu_index = (self._state.kind, fb.to_gpu(self._state.index, self._gpu_resources))
            return self._gpu_index

    # ---- persistence --------------------------------------------------------------------------

    def snapshot(self, root: str | Path) -> Path:
        """Write the index under `root` atomically (see index.snapshot); returns the new folder."""
        with self._lock.read():
            st = self._state
            ids, vectors = _live(st)
            arrays = {
                "item_ids": np.array(ids, dtype=np.str_),
                "labels": np.array([st.label_of[i] for i in ids], dtype=np.int64),
                "vectors": vectors,
                "dead": np.array(sorted(st.dead), dtype=np.int64),
                "faiss": fb.serialize(st.index),
            }
            meta = {"config": asdict(self.config), "kind": st.kind, "items": len(ids),
                    "next_label": st.next_label, "trained_on": st.trained_on}
        return write_snapshot(root, arrays, meta)

    @classmethod
    def restore(cls, root: str | Path, config: IndexConfig | None = None) -> ItemIndex:
        """An index equal to the last snapshot under `root`; `config` may change runtime knobs, not dim."""
        meta, arrays = read_snapshot(root)
        config = config or IndexConfig(**meta["config"])
        if config.dim != meta["config"]["dim"]:
            raise ValueError(f"IndexConfig.dim {config.dim} != snapshot dim {meta['config']['dim']}")
        index = cls(config)
        ids = arrays["item_ids"].tolist()
        assert arrays["vectors"].shape == (len(ids), config.dim) and len(arrays["labels"]) == len(ids)
        st = _State(kind=meta["kind"], index=fb.deserialize(arrays["faiss"]), vectors=arrays["vectors"].copy(),
                    next_label=meta["next_label"], trained_on=meta["trained_on"], dead=set(arrays["dead"].tolist()))
        st.slot_of = {item: slot for slot, item in enumerate(ids)}
        st.label_of = dict(zip(ids, arrays["labels"].tolist(), strict=True))
        st.item_of = {label: item for item, label in st.label_of.items()}
        assert st.index.ntotal == len(ids) + len(st.dead), "faiss index and id table disagree"
        index._state = st
        return index


def ensure_same_dim(encoder_dim: int, config: IndexConfig) -> None:
    """Start-up check: the encoder's vectors must fit the index."""
    if encoder_dim != config.dim:
        raise ValueError(f"IndexConfig.dim is {config.dim} but the encoder produces {encoder_dim}-d vectors")


def choose_kind(config: IndexConfig, n_items: int) -> str:
    """The backend for a catalogue of `n_items`: exact ("flat") below `config.approx_min_items`,
    where it is about as fast as an approximate index of the same recall, else `config.kind`."""
    return "flat" if config.kind == "flat" or n_items < config.approx_min_items else config.kind


def _build_state(config: IndexConfig, ids: list[str], vectors: np.ndarray) -> _State:
    """A fresh generation holding `ids` -> `vectors` (N, D), labels 0..N-1."""
    n = len(ids)
    kind = choose_kind(config, n)
    index = fb.new_index(kind, config.dim, train=vectors if kind == "ivf" else None, nlist=config.ivf_nlist,
                         hnsw_m=config.hnsw_m, hnsw_ef_construction=config.hnsw_ef_construction)
    for start in range(0, n, ADD_CHUNK):
        index.add_with_ids(vectors[start:start + ADD_CHUNK], np.arange(start, min(start + ADD_CHUNK, n), dtype=np.int64))
    capacity = max(1024, n + n // 4)
    store = np.zeros((capacity, config.dim), dtype=np.float32)
    store[:n] = vectors
    return _State(kind=kind, index=index, vectors=store, slot_of={item: i for i, item in enumerate(ids)},
                  label_of={item: i for i, item in enumerate(ids)}, item_of=dict(enumerate(ids)),
                  next_label=n, trained_on=n if kind == "ivf" else 0)


def _state_upsert(st: _State, ids: list[str], rows: np.ndarray) -> None:
    """Write ids -> rows (N, D) into `st`; every write gets fresh labels (HNSW keeps old ones dead)."""
    if not ids:
        return
    _forget_labels(st, [st.label_of[i] for i in ids if i in st.label_of])
    labels = np.arange(st.next_label, st.next_label + len(ids), dtype=np.int64)
    st.next_label += len(ids)
    slots = [_take_slot(st, item) for item in ids]  # may grow st.vectors: before indexing it
    st.vectors[slots] = rows
    for item, label in zip(ids, labels.tolist(), strict=True):
        st.label_of[item] = label
        st.item_of[label] = item
    st.index.add_with_ids(np.ascontiguousarray(rows, dtype=np.float32), labels)


def _state_remove(st: _State, item_ids: Iterable[str]) -> list[str]:
    present = [i for i in dict.fromkeys(item_ids) if i in st.label_of]
    _forget_labels(st, [st.label_of[i] for i in present])
    for item in present:
        del st.label_of[item]
        st.free_slots.append(st.slot_of.pop(item))
    return present


def _forget_labels(st: _State, labels: list[int]) -> None:
    if not labels:
        return
    for label in labels:
        del st.item_of[label]
    if st.kind == "hnsw":
        st.dead.update(labels)
        st.dead_selector_cache = None
    else:
        fb.remove(st.index, np.asarray(labels, dtype=np.int64))


def _reorganise_due(st: _State, config: IndexConfig) -> bool:
    n = len(st.slot_of)
    return (
        (st.kind == "flat" and choose_kind(config, n) != "flat")
        or (st.kind == "ivf" and n >= IVF_RETRAIN_GROWTH * max(st.trained_on, 1))
        or (st.kind == "hnsw" and len(st.dead) > config.max_dead_fraction * max(n, 1))
    )


def _live(st: _State) -> tuple[list[str], np.ndarray]:
    ids = list(st.slot_of)
    return ids, st.vectors[[st.slot_of[i] for i in ids]] if ids else np.zeros((0, st.vectors.shape[1]), np.float32)


def _take_slot(st: _State, item: str) -> int:
    if item in st.slot_of:
        return st.slot_of[item]
    if st.free_slots:
        slot = st.free_slots.pop()
    else:
        slot = len(st.slot_of)
        if slot >= len(st.vectors):  # grow by half: amortised O(1) per add
            grown = np.zeros((max(1024, len(st.vectors) * 3 // 2), st.vectors.shape[1]), dtype=np.float32)
            grown[: len(st.vectors)] = st.vectors
            st.vectors = grown
    st.slot_of[item] = slot
    return slot


def _dedup_last(ids: list[str], rows: np.ndarray) -> tuple[list[str], np.ndarray]:
    last = {item: pos for pos, item in enumerate(ids)}
    if len(last) == len(ids):
        return ids, rows
    keep = sorted(last.values())
    return [ids[p] for p in keep], rows[keep]


def _hits(st: _State, scores: np.ndarray, labels: np.ndarray, excluded: set[str], k: int) -> list[Hit]:
    hits = []
    for score, label in zip(scores.tolist(), labels.tolist(), strict=True):
        item = st.item_of.get(label)
        if item is None or item in excluded:
            continue
        hits.append(Hit(item, score))
        if len(hits) == k:
            break
    return hits
