"""Benchmarks for the item index and the visual encoder; each returns a JSON-ready dict.

- `bench_index_size(n, dim)`: N synthetic unit vectors (D), indexed twice, exact (flat) and
  approximate (the config's IVF or HNSW) -> for each: bulk load time, streaming upsert rate, search
  p50/p99 at batch 1 and 64, recall@100 against brute force on a query sample, resident memory
  growth; the top level repeats the numbers of the kind the config's rule chooses at N items.
- `bench_encoder(images)`: images/s of the offline encoder (decode + preprocess + model) per batch size.
- `visual_neighbour_precision(data_dir)`: precision@k of "same label" among the visual neighbours
  of a labelled image folder (products.csv + images/), next to the random-neighbour rate.

Synthetic vectors come from a Gaussian mixture (cluster centres N(0, I), unit noise around them,
then L2-normalised): neighbours cluster as real embeddings do. "uniform" (isotropic Gaussian) is the
worst case for any approximate index and is available for comparison.
"""

from __future__ import annotations

import csv
import gc
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from index.item_index import IndexConfig, ItemIndex, choose_kind

log = logging.getLogger(__name__)
RECALL_K = 100
STREAM_BATCH = 100  # items per upsert when measuring the streaming add rate


def synthetic_vectors(n: int, dim: int, *, distribution: str = "clustered", clusters: int = 1000,
                      seed: int = 0) -> np.ndarray:
    """(N, D) float32 unit rows; "clustered" draws around `clusters` centres fixed by `seed`."""
    if distribution not in ("clustered", "uniform"):
        raise ValueError(f"distribution must be 'clustered' or 'uniform', got {distribution!r}")
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    centres = np.random.default_rng(12345).standard_normal((clusters, dim), dtype=np.float32)
    for start in range(0, n, 100_000):  # chunked: bounds the float64-free temporaries
        rows = min(100_000, n - start)
        block = rng.standard_normal((rows, dim), dtype=np.float32)
        if distribution == "clustered":
            block += centres[rng.integers(0, clusters, rows)]
        out[start:start + rows] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux /proc; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def percentiles_ms(seconds: Sequence[float]) -> dict:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def bench_index_size(n: int, dim: int, *, config: IndexConfig | None = None, distribution: str = "clustered",
                     queries: int = 200, batch64_rounds: int = 20, stream_items: int = 5000, seed: int = 0) -> dict:
    """Every number for one catalogue size, for an exact (flat) and an approximate index of the
    same vectors; the top-level numbers are those of the kind `config` chooses at `n` items."""
    config = config or IndexConfig(dim=dim)
    approximate_kind = config.kind if config.kind != "flat" else "ivf"
    vectors = synthetic_vectors(n, dim, distribution=distribution, seed=seed)
    ids = [str(i) for i in range(n)]
    query_rows = synthetic_vectors(queries + 64 * batch64_rounds, dim, distribution=distribution, seed=seed + 1)
    truth = _exact_neighbours(vectors, query_rows[:queries])
    measure = {"vectors": vectors, "ids": ids, "query_rows": query_rows, "queries": queries,
               "stream_items": stream_items, "seed": seed, "truth": truth}
    exact = _measure(replace(config, kind="flat"), **measure)
    approximate = _measure(replace(config, kind=approximate_kind, approx_min_items=1), **measure)
    chosen = choose_kind(config, n)
    del vectors
    gc.collect()
    return {"items": n, "dim": dim, "distribution": distribution, "chosen_kind": chosen,
            "approx_min_items": config.approx_min_items, "vector_mb": round(n * dim * 4 / 2**20, 1),
            "exact_knn_ms_per_query": truth["ms_per_query"],
            **(exact if chosen == "flat" else approximate), "exact": exact, "approximate": approximate}


def _exact_neighbours(vectors: np.ndarray, queries: np.ndarray) -> dict:
    """Brute-force top-100 rows (Q, 100) by inner product, and its batched cost per query."""
    import faiss

    start = time.perf_counter()
    _, rows = faiss.knn(queries, vectors, RECALL_K, metric=faiss.METRIC_INNER_PRODUCT)
    return {"rows": rows, "ms_per_query": round((time.perf_counter() - start) * 1000 / len(queries), 3)}


def _measure(config: IndexConfig, *, vectors: np.ndarray, ids: list[str], query_rows: np.ndarray, queries: int,
             stream_items: int, seed: int, truth: dict) -> dict:
    """Build `config`'s index over `vectors` (N, D) and time loads, writes and searches."""
    gc.collect()
    rss_before = rss_mb()
    index = ItemIndex(config)
    start = time.perf_counter()
    index.replace_all(ids, vectors)
    build_s = time.perf_counter() - start
    rss_after = rss_mb()
    found = index.search(query_rows[:queries], RECALL_K)
    overlap = [len({ids[j] for j in row} & {h.item_id for h in hits}) / RECALL_K
               for row, hits in zip(truth["rows"], found, strict=True)]
    result = {
        "kind": index.stats()["kind"],
        "bulk_load_s": round(build_s, 3), "bulk_add_per_s": round(len(ids) / build_s),
        "stream_add_per_s": _stream_add_rate(index, config.dim, stream_items, seed),
        "search_batch1": _latency(index, query_rows[:queries], batch=1),
        "search_batch64": _latency(index, query_rows[queries:], batch=64),
        "recall_at_100": round(float(np.mean(overlap)), 4), "recall_queries": queries,
        "rss_growth_mb": round(rss_after - rss_before, 1),
    }
    if result["kind"] == "ivf":
        result["ivf_nprobe"] = config.ivf_nprobe
    elif result["kind"] == "hnsw":
        result["hnsw_ef_search"] = max(config.hnsw_ef_search, RECALL_K)
    del index
    return result


def _stream_add_rate(index: ItemIndex, dim: int, items: int, seed: int) -> float:
    extra = synthetic_vectors(items, dim, seed=seed + 2)
    start = time.perf_counter()
    for begin in range(0, items, STREAM_BATCH):
        index.upsert([f"new-{i}" for i in range(begin, begin + STREAM_BATCH)], extra[begin:begin + STREAM_BATCH])
    rate = items / (time.perf_counter() - start)
    index.remove([f"new-{i}" for i in range(items)])
    return round(rate)


def _latency(index: ItemIndex, queries: np.ndarray, *, batch: int) -> dict:
    index.search(queries[:batch], RECALL_K)  # warm-up
    times = []
    for start in range(0, len(queries) - batch + 1, batch):
        begin = time.perf_counter()
        index.search(queries[start:start + batch], RECALL_K)
        times.append(time.perf_counter() - begin)
    return {"batch": batch, "calls": len(times), **percentiles_ms(times)}


def bench_index(sizes: Sequence[int], dim: int, *, distribution: str = "clustered",
                config: IndexConfig | None = None) -> dict:
    """`bench_index_size` per size; top level: the chosen index at the largest size, and per size
    the exact and approximate p99 and recall side by side."""
    config = config or IndexConfig(dim=dim)
    runs = []
    for n in sizes:
        log.info("index bench: %d x %d (%s)", n, dim, distribution)
        runs.append(bench_index_size(n, dim, config=config, distribution=distribution))
        log.info("index bench: %s", runs[-1])
    largest = runs[-1]
    summary = [{"items": r["items"], "chosen_kind": r["chosen_kind"],
                **{f"{side}_{key}": r[side][key] for side in ("exact", "approximate")
                   for key in ("kind", "recall_at_100")},
                **{f"{side}_p99_ms": r[side]["search_batch1"]["p99_ms"] for side in ("exact", "approximate")}}
               for r in runs]
    return {"recall_at_100": largest["recall_at_100"], "search_p99_ms": largest["search_batch1"]["p99_ms"],
            "largest_items": largest["items"], "chosen_kind": largest["chosen_kind"],
            "approx_min_items": config.approx_min_items, "summary": summary, "runs": runs}


def bench_encoder(images: Sequence[bytes | str | Path], batch_sizes: Sequence[int] = (1, 64), *,
                  rounds: int = 2, encoder=None) -> dict:
    """images/s of the encoder end to end, per batch size (`rounds` timed batches after a warm-up)."""
    from index.encoders import EncoderConfig, build_encoder

    encoder = encoder or build_encoder(EncoderConfig())
    out = {"encoder_id": encoder.encoder_id, "device": encoder.device}
    for batch in batch_sizes:
        pool = [images[i % len(images)] for i in range(batch * (rounds + 1))]
        encoder.embed(pool[:batch])  # warm-up
        start = time.perf_counter()
        for r in range(1, rounds + 1):
            encoder.embed(pool[r * batch:(r + 1) * batch])
        out[f"images_per_s_batch{batch}"] = round(batch * rounds / (time.perf_counter() - start), 1)
    return out


def labelled_images(data_dir: str | Path, *, limit: int | None = None) -> tuple[list[Path], dict[str, list[str]]]:
    """Image paths and label columns of a folder with products.csv (columns include `image`)."""
    data_dir = Path(data_dir)
    with open(data_dir / "products.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:limit]
    labels = {col: [r[col] for r in rows] for col in ("article_type", "sub_category", "master_category")}
    return [data_dir / r["image"] for r in rows], labels


def random_neighbour_rate(labels: Sequence[str]) -> float:
    """Expected precision of uniformly random neighbours (self excluded): sum n_t(n_t-1) / N(N-1)."""
    n = len(labels)
    return sum(c * (c - 1) for c in Counter(labels).values()) / (n * (n - 1))


def precision_at_k(vectors: np.ndarray, labels: Sequence[str], k: int) -> float:
    """Share of each row's k exact cosine neighbours (self excluded) with the row's label."""
    index = ItemIndex(IndexConfig(dim=vectors.shape[1], kind="flat"))
    ids = [str(i) for i in range(len(vectors))]
    index.replace_all(ids, vectors)
    hits = index.search(vectors, k, exclude=[{i} for i in ids])
    label = np.asarray(labels)
    return float(np.mean([np.mean(label[[int(h.item_id) for h in row]] == label[q]) for q, row in enumerate(hits)]))


def visual_neighbour_precision(data_dir: str | Path, *, k: int = 10, limit: int | None = None, encoder=None) -> dict:
    from index.encoders import EncoderConfig, build_encoder

    paths, labels = labelled_images(data_dir, limit=limit)
    encoder = encoder or build_encoder(EncoderConfig())
    start = time.perf_counter()
    result = encoder.embed(paths)
    embed_s = time.perf_counter() - start
    ok = result.ok
    vectors = result.vectors[ok]
    out = {"images": int(ok.sum()), "failed": int((~ok).sum()), "encoder_id": encoder.encoder_id, "k": k,
           "embed_s": round(embed_s, 1)}
    for column, values in labels.items():
        kept = [v for v, good in zip(values, ok, strict=True) if good]
        out[column] = {f"precision_at_{k}": round(precision_at_k(vectors, kept, k), 4),
                       "random_rate": round(random_neighbour_rate(kept), 4), "classes": len(set(kept))}
    return out
