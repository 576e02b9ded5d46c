"""The learned sequential retriever: SASRec item vectors, searched with a query from the recent history.

    trained SASRec (index.sasrec) ──► save_retriever(dir): retriever.safetensors + retriever.json
    several dirs ──► stack_retrievers ──► one retriever of all their towers (the mean of their scores)
    dir ──► retriever_records ──► one ItemEmbedding per item (encoder_id = version) for retriever-vectors
                              ──► one RetrieverModel (the network without its item table) for retriever-models
    both compacted topics ──► SequentialRetriever (a replica in every streams worker)
    SequentialRetriever.query_for(history) ──► UserQuery: .top(k) [(item id, score)], best first
                                               (source "sequential"); .affinity(items) the same score
                                               for any items (None where the version has no vector)

The query is SASRec's hidden state after the user's latest items (up to `max_len`), computed with
the replica's own copy of the item vectors; the score of an item is the inner product with its
vector, searched exactly in FAISS (`ItemIndex`, not normalised). A retriever of several towers
(`index.sasrec.SASRecTowers`, `RetrieverModel.towers`) looks the same from here: wider vectors and
a query whose inner product is the towers' mean score. The same score of every candidate,
whatever source proposed it (its `affinity`), lets the model worker fuse the retriever's view with
the model's (`model_worker.rerank.RerankConfig.retrieval_weight`). Items the version has no vector
for (new since training) are skipped in the history and never retrieved; the content and
co-visitation sources cover them.

A new version replaces the old without a restart: vectors are kept per version (the old version
answers while the new one's vectors arrive), and when a RetrieverModel arrives it becomes the one
queried and the vectors of every other version are dropped. Publishing sends the vectors first and
the model last, so a worker switches once the new vectors are (mostly) there; a replica that starts
later reads both topics from the beginning, where compaction has left the newest vector of each
item and the newest model. Memory: items x D x 4 bytes per version held (the current one and at
most `MAX_WAITING_VERSIONS` others). Weights travel as safetensors (plain tensors; nothing on the
topic is unpickled or run) and must match the record's declared shapes exactly, or the record is
refused and the current version stays.

Signed (a replica given the deployment's key, `runtime.signing`): the model record carries the
digest of its version's item vectors and an HMAC over both (`signed_body`). A replica switches only
to a model whose signature verifies, and only once the vectors it holds for that version are all
there and hash to the digest (until then the model waits and the old version answers); after the
switch that version's vectors are sealed, and a vector that differs from the one held is refused.
Someone who can write the topics but lacks the key can delay a switch, never steer the retriever.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import load_file, save, save_file

from index.item_index import IndexConfig, ItemIndex
from index.sasrec import SASRec, SASRecConfig, SASRecTowers, sasrec_model
from runtime.signing import sign, verify
from runtime.tail import TopicTail, decode_each
from schemas.records import ItemEmbedding, RetrieverModel
from schemas.topics import RETRIEVER_MODELS, RETRIEVER_VECTORS, TopicSpec

log = logging.getLogger(__name__)

WEIGHTS_FILE, META_FILE = "retriever.safetensors", "retriever.json"
SHAPE = ("hidden", "n_blocks", "n_heads", "max_len", "loss")  # the config fields saved with the weights (and towers)
MODEL_KEY = "sequential"  # the retriever-models key: one retriever per deployment
ITEM_TABLE = "item_emb.weight"  # each tower's item table ends with this name; it travels as vectors, not weights
MAX_WAITING_VERSIONS = 2  # versions held besides the current one (the newest touched are kept)


# ----------------------------------------------------------------------------- on disk


def save_retriever(model: SASRec | SASRecTowers, item_keys: Sequence[str], out: str | Path, *,
                   info: dict | None = None) -> str:
    """Write a trained SASRec (item j = item_keys[j - 1]) to `out` as a plain SASRec (content and
    attribute embeddings are folded into the item table); returns its version (a hash of the weights, so the
    same model always publishes as the same version)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if len(item_keys) != model.n_items:
        raise ValueError(f"item_keys: {len(item_keys)} keys for a model of {model.n_items} items")
    state = model.plain_state()  # side information folded into the item table
    version = "sasrec-" + hashlib.sha256(save(state)).hexdigest()[:16]
    save_file(state, str(out / WEIGHTS_FILE))
    config = {k: getattr(model.config, k) for k in (*SHAPE, "towers")}
    (out / META_FILE).write_text(json.dumps({"version": version, "config": config, "item_keys": list(item_keys),
                                             "info": info or {}}, indent=1))
    return version


def read_meta(path: str | Path) -> dict:
    """A `save_retriever` folder's retriever.json: version, config, item_keys and info."""
    return json.loads((Path(path) / META_FILE).read_text())


def load_retriever(path: str | Path) -> tuple[str, SASRec | SASRecTowers, list[str]]:
    """(version, model in eval mode, item keys) from a `save_retriever` folder."""
    path = Path(path)
    meta = read_meta(path)
    model = sasrec_model(len(meta["item_keys"]), SASRecConfig(**meta["config"], dropout=0.0))
    model.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
    return meta["version"], model.eval(), list(meta["item_keys"])


def stack_retrievers(paths: Sequence[str | Path]) -> tuple[SASRecTowers, list[str]]:
    """(model, item keys): the towers of every `save_retriever` folder in `paths` side by side, as one
    retriever whose score is the mean of all those towers' scores (a two-tower folder counts twice
    a one-tower one). Independently trained retrievers miss different targets, so together they miss
    fewer. They must cover the same items in the same order and have towers of the same shape."""
    if len(paths) < 2:
        raise ValueError(f"stacking needs at least two retrievers, got {len(paths)}")
    loaded = [(Path(p), *load_retriever(p)[1:]) for p in paths]
    first_path, _, keys = loaded[0]
    towers = [t for _, model, _ in loaded for t in (model.towers if isinstance(model, SASRecTowers) else [model])]
    for path, _, other_keys in loaded[1:]:
        if other_keys != keys:
            raise ValueError(f"{path} covers other items (or another order) than {first_path}")
    one = towers[0].config
    for tower in towers[1:]:
        differ = [f"{k} {getattr(one, k)} vs {getattr(tower.config, k)}" for k in SHAPE
                  if getattr(tower.config, k) != getattr(one, k)]
        if differ:
            raise ValueError("stacked retrievers need towers of the same shape: " + ", ".join(differ))
    config = SASRecConfig(**{**{k: getattr(one, k) for k in SHAPE}, "hidden": one.hidden * len(towers)},
                          towers=len(towers), dropout=0.0)
    stacked = SASRecTowers(len(keys), config)
    for mine, theirs in zip(stacked.towers, towers, strict=True):
        mine.load_state_dict(theirs.state_dict())
    return stacked.eval(), keys


def vectors_digest(vectors: Iterable[tuple[str, np.ndarray]]) -> str:
    """sha256 of a version's item vectors, in item-id order: each id (UTF-8), a NUL byte, its
    little-endian float32 values."""
    digest = hashlib.sha256()
    for item_id, vector in sorted(vectors, key=lambda pair: pair[0]):
        digest.update(item_id.encode() + b"\0" + np.asarray(vector, dtype="<f4").tobytes())
    return digest.hexdigest()


def signed_body(record: RetrieverModel) -> bytes:
    """The bytes a RetrieverModel's signature covers: every field but the signature, the weights
    by their sha256 (and `towers` only when there are several)."""
    fields = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)
              if f.name not in ("weights", "signature")}
    fields["weights_sha256"] = hashlib.sha256(record.weights).hexdigest()
    if fields["towers"] == 1:
        del fields["towers"]  # as signed before records had towers: their signatures still verify
    return json.dumps(fields, sort_keys=True).encode()


def retriever_records(path: str | Path, *, now_ms: int | None = None,
                      signing_key: bytes | None = None) -> tuple[list[ItemEmbedding], RetrieverModel]:
    """The records that publish the folder's retriever: item vectors first, then the model (its
    vectors' digest always, signed when `signing_key` is given)."""
    version, model, keys = load_retriever(path)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    table = model.item_table().detach()[1:].numpy().astype(np.float32)  # (I, D): row j-1 = item j
    vectors = [ItemEmbedding(item_id=key, vector=row, encoder_id=version, event_time_ms=now_ms,
                             embedded_time_ms=now_ms) for key, row in zip(keys, table, strict=True)]
    body = {name: t.detach().contiguous() for name, t in model.state_dict().items() if not name.endswith(ITEM_TABLE)}
    c = model.config
    record = RetrieverModel(version=version, hidden=c.hidden, n_blocks=c.n_blocks, n_heads=c.n_heads,
                            max_len=c.max_len, loss=c.loss, towers=c.towers, weights=save(body), n_items=len(keys),
                            created_time_ms=now_ms, vectors_digest=vectors_digest(zip(keys, table, strict=True)))
    if signing_key is not None:
        record = dataclasses.replace(record, signature=sign(signing_key, signed_body(record)))
    return vectors, record


def query_network(record: RetrieverModel) -> SASRec | SASRecTowers:
    """The record's network in eval mode; ValueError if its weights are not exactly the declared shapes."""
    config = SASRecConfig(hidden=record.hidden, n_blocks=record.n_blocks, n_heads=record.n_heads,
                          max_len=record.max_len, loss=record.loss, towers=record.towers, dropout=0.0)
    model = sasrec_model(0, config)
    try:
        body = load_tensors(record.weights)
    except Exception as err:  # safetensors raises its own error types for malformed bytes
        raise ValueError(f"weights are not a safetensors file: {err}") from err
    tables = {name: t for name, t in model.state_dict().items() if name.endswith(ITEM_TABLE)}  # empty: 0 items
    expected = {name: t.shape for name, t in model.state_dict().items() if name not in tables}
    got = {name: t.shape for name, t in body.items()}
    if got != expected:
        wrong = sorted(set(got.items()) ^ set(expected.items()))[:3]
        raise ValueError(f"weights do not match the declared network (first differences: {wrong})")
    if not all(torch.isfinite(t).all() for t in body.values()):
        raise ValueError("weights hold NaN or infinity")
    model.load_state_dict({**body, **tables})
    return model.eval()


# ----------------------------------------------------------------------------- the replica


class SequentialRetriever:
    """Item vectors per version plus the current version's query network; safe to update from the
    follower threads while queried. `apply`/`remove`/`decode_errors` make it a store for
    `runtime.features.feature_handler`, like the catalogue replica."""

    def __init__(self, *, signing_key: bytes | None = None) -> None:
        self.signing_key = signing_key  # None: records are not verified (a deployment without a key)
        self._indexes: dict[str, ItemIndex] = {}  # version -> its item vectors, least recently touched first
        self._network: SASRec | SASRecTowers | None = None
        self._waiting: tuple[RetrieverModel, SASRec | SASRecTowers] | None = None  # signed, its vectors not all here yet
        self.version: str | None = None
        self._lock = threading.Lock()
        self.updates = 0
        self.decode_errors = 0
        self.rejected = 0  # vectors or models refused (counted, skipped)

    def apply(self, records: Sequence[ItemEmbedding]) -> int:
        """Upsert item vectors, each into its version's index. Returns how many applied."""
        by_version: dict[str, list[ItemEmbedding]] = {}
        for record in records:
            by_version.setdefault(record.encoder_id, []).append(record)
        applied = 0
        with self._lock:
            for version, group in by_version.items():
                index = self._indexes.get(version)
                dim = group[0].vector.shape[0] if index is None else index.config.dim
                fits = [r for r in group if r.vector.shape == (dim,)]
                if self._network is not None and version == self.version and dim != self._network.config.hidden:
                    fits = []
                if len(fits) < len(group):
                    self.rejected += len(group) - len(fits)
                    log.error("skipping %d retriever vectors of %s whose dimension does not fit", len(group) - len(fits),
                              version)
                if fits and self.signing_key is not None and version == self.version:
                    fits = self._unchanged(index, fits)  # the current version is sealed
                if not fits:
                    continue
                if index is None:
                    index = self._indexes[version] = ItemIndex(IndexConfig(dim=dim, normalize=False))
                    self._drop_oldest_waiting()
                else:
                    self._indexes[version] = self._indexes.pop(version)  # now the most recently touched
                index.upsert([r.item_id for r in fits], np.stack([r.vector for r in fits]))
                applied += len(fits)
            self.updates += applied
            self._switch_if_complete()
        return applied

    def _unchanged(self, index: ItemIndex, records: list[ItemEmbedding]) -> list[ItemEmbedding]:
        """Of vectors for the sealed current version, those equal to the ones held (no-ops); the
        rest are counted and refused."""
        held = index.get_vectors([r.item_id for r in records])
        same = [r for r in records if r.item_id in held and np.array_equal(held[r.item_id], r.vector)]
        if len(same) < len(records):
            self.rejected += len(records) - len(same)
            log.error("refusing %d retriever vectors that would change the signed version %s",
                      len(records) - len(same), self.version)
        return same

    def _drop_oldest_waiting(self) -> None:
        waiting = [v for v in self._indexes if v != self.version]
        for version in waiting[:max(0, len(waiting) - MAX_WAITING_VERSIONS)]:
            del self._indexes[version]
            log.warning("dropping the retriever vectors of version %s: more than %d versions waiting", version,
                        MAX_WAITING_VERSIONS)

    def _switch_if_complete(self) -> None:
        """(lock held) Switch to the waiting signed model once its vectors are all here and match."""
        if self._waiting is None:
            return
        record, network = self._waiting
        index = self._indexes.get(record.version)
        if index is None or len(index) < record.n_items:
            return
        if vectors_digest(index.get_vectors(index.ids()).items()) != record.vectors_digest:
            if len(index) == record.n_items:
                log.error("retriever %s: the vectors held do not match the signed digest; still waiting",
                          record.version)
            return
        self._waiting = None
        self._switch(record, network)

    def _switch(self, record: RetrieverModel, network: SASRec | SASRecTowers) -> None:
        """(lock held) Make `record` the version queried; every other version's vectors go."""
        self._network, self.version = network, record.version
        for version in [v for v in self._indexes if v != record.version]:
            del self._indexes[version]
        log.info("sequential retriever: now version %s (%d of %d item vectors here)", record.version,
                 len(self._indexes.get(record.version, ())), record.n_items)

    def remove(self, item_ids: Collection[str]) -> None:
        with self._lock:
            for index in self._indexes.values():
                index.remove(item_ids)

    def apply_model(self, record: RetrieverModel) -> bool:
        """Switch to `record`'s version (dropping every other version's vectors); False, and the
        current version kept, if it is refused, or (signed) while its vectors are incomplete: it
        then waits and switches when they are all here (`waiting`)."""
        try:
            network = query_network(record)
            if self.signing_key is not None:
                if not verify(self.signing_key, signed_body(record), record.signature):
                    raise ValueError("unsigned, or its signature does not verify under this deployment's key")
                if record.vectors_digest is None:
                    raise ValueError("signed without a vectors digest")
        except ValueError as err:
            self.rejected += 1
            log.error("refusing retriever model %s: %s", record.version, err)
            return False
        with self._lock:
            held = self._indexes.get(record.version)
            if held is not None and held.config.dim != record.hidden:
                self.rejected += 1
                log.error("refusing retriever model %s: its vectors have dimension %d, the network %d",
                          record.version, held.config.dim, record.hidden)
                return False
            if self.signing_key is None:
                self._switch(record, network)
                return True
            self._waiting = (record, network)
            self._switch_if_complete()
            return self.version == record.version

    @property
    def waiting(self) -> str | None:
        """The signed version waiting for its vectors, if any."""
        waiting = self._waiting
        return None if waiting is None else waiting[0].version

    def query_for(self, history: Sequence[str]) -> UserQuery | None:
        """The current version's query for `history`; None before a model arrived or when no
        history item has a vector."""
        with self._lock:
            network, index = self._network, self._indexes.get(self.version) if self.version else None
        if network is None or index is None or not len(index):
            return None
        query = self.query(network, index, history)
        return None if query is None else UserQuery(query, index)

    def candidates(self, history: Sequence[str], k: int, *, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
        """Up to k (item id, score) by the current version, best first, none of `exclude`."""
        query = self.query_for(history)
        return [] if query is None else query.top(k, exclude=exclude)

    @staticmethod
    @torch.no_grad()
    def query(network: SASRec | SASRecTowers, index: ItemIndex, history: Sequence[str]) -> np.ndarray | None:
        """(D,) the network's state after the latest history items that have vectors."""
        recent = list(history)[-4 * network.config.max_len:]
        vectors = index.get_vectors(recent)
        rows = [vectors[item] for item in recent if item in vectors][-network.config.max_len:]
        if not rows:
            return None
        items = torch.from_numpy(np.stack(rows))[None]  # (1, T, D)
        hidden = network.encode(items, torch.ones(items.shape[:2], dtype=torch.bool))
        return hidden[0, -1].numpy().astype(np.float32)

    def __len__(self) -> int:
        with self._lock:
            index = self._indexes.get(self.version) if self.version else None
        return len(index) if index is not None else 0

    def stats(self) -> dict:
        with self._lock:
            held = list(self._indexes)
        return {"version": self.version, "vectors": len(self), "held_versions": held, "waiting": self.waiting,
                "updates": self.updates,
                "signed": self.signing_key is not None, "rejected": self.rejected,
                "decode_errors": self.decode_errors}


class UserQuery:
    """One user's query vector and the version's item vectors it scores."""

    def __init__(self, query: np.ndarray, index: ItemIndex):
        self.query, self.index = query, index
        self._affinity: dict[str, float | None] = {}  # item id -> inner product, computed once per query

    def top(self, k: int, *, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
        """Up to k (item id, inner product), best first, none of `exclude`."""
        return [(hit.item_id, hit.score) for hit in self.index.search_one(self.query, k, exclude=exclude)]

    def affinity(self, item_ids: Sequence[str]) -> list[float | None]:
        """The inner product of each item's vector with the query; None where there is no vector.
        Each item is scored once per query (the merge asks for the behavioural items, then for all)."""
        missing = [i for i in dict.fromkeys(item_ids) if i not in self._affinity]
        vectors = self.index.get_vectors(missing) if missing else {}
        if vectors:
            self._affinity.update(zip(vectors, (np.stack(list(vectors.values())) @ self.query).tolist(), strict=True))
        self._affinity.update((i, None) for i in missing if i not in vectors)
        return [self._affinity[i] for i in item_ids]


def model_handler(retriever: SequentialRetriever) -> Callable[[list], None]:
    """Apply a poll's worth of retriever-models messages: the last model the replica accepts (or
    holds waiting for its vectors) wins; refused ones behind it do not hide it."""

    def handle(messages: list) -> None:
        models = [record for _, record in decode_each(messages, RetrieverModel, retriever, "retriever model")
                  if record is not None]
        for record in reversed(models):
            if record.version in (retriever.version, retriever.waiting):
                return
            if retriever.apply_model(record) or retriever.waiting == record.version:
                return

    return handle


def retriever_followers(consumer_factory: Callable[[], object], vectors_topic: str, models_topic: str,
                        retriever: SequentialRetriever) -> tuple[TopicTail, TopicTail]:
    """The two threads that keep `retriever` in step with its topics."""
    from runtime.features import feature_handler

    return (TopicTail(consumer_factory, vectors_topic, feature_handler(retriever)),
            TopicTail(consumer_factory, models_topic, model_handler(retriever)))


def publish_retriever(path: str | Path, send: Callable[[TopicSpec, str, bytes], object], *,
                      signing_key: bytes | None = None) -> dict:
    """Send the folder's vectors (key item id), then its model (key MODEL_KEY, signed with
    `signing_key` when given), through `send(topic spec, key, value)`; the caller flushes.
    Returns what was sent."""
    from schemas.codec import encode

    vectors, record = retriever_records(path, signing_key=signing_key)
    for vector in vectors:
        send(RETRIEVER_VECTORS, vector.item_id, encode(vector))
    send(RETRIEVER_MODELS, MODEL_KEY, encode(record))
    return {"version": record.version, "vectors": len(vectors), "model_bytes": len(record.weights),
            "signed": record.signature is not None}
