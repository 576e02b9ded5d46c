"""Thin layer over faiss: build an index of one kind, search it, copy it to a GPU.

In:  vectors (N, D) float32 (unit rows, so inner product = cosine), labels (N,) int64.
Out: `search` -> scores (B, K) float32 and labels (B, K) int64 (-1 where fewer than K exist).

Kinds: "flat" (exact, `IndexIDMap2(IndexFlatIP)`), "ivf" (`IndexIVFFlat`, trained k-means
lists), "hnsw" (`IndexIDMap2(IndexHNSWFlat)`). HNSW cannot remove ids, so its callers keep
tombstones, pass them as `dead` (filtered with `IDSelectorNot`) and rebuild from time to time.
faiss is imported lazily; a GPU copy is made only when faiss reports GPUs.
"""

from __future__ import annotations

import functools
import math

import numpy as np

KINDS = ("flat", "ivf", "hnsw")
IVF_TRAIN_POINTS_PER_LIST = 40  # k-means sample per list: faiss warns below 39; more costs time linearly
IVF_KMEANS_ITERATIONS = 10
IVF_MIN_SCANNED = 2048  # vectors an IVF search reads at least (see ivf_probe_count); 100k items: nprobe stays 16


def faiss_module():
    try:
        import faiss
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "the item index needs faiss: install `faiss-cpu` (or `faiss-gpu` on GPU hosts, not both)"
        ) from err
    return faiss


def ivf_list_count(n_items: int, requested: int | None) -> int:
    """nlist: the requested count, else about 2 * sqrt(N), and never more than N / 40.

    2 * sqrt(N) (2,000 lists at 1M) keeps k-means training near a minute on 2 CPU cores; 4 * sqrt(N)
    took 4x longer to train for little gain in latency at nprobe 32.
    """
    nlist = requested or int(2 * math.sqrt(max(n_items, 1)))
    return max(1, min(nlist, n_items // IVF_TRAIN_POINTS_PER_LIST))


def ivf_probe_count(index, nprobe: int) -> int:
    """Lists to visit: `nprobe`, raised so that about IVF_MIN_SCANNED vectors are read, at most all.

    A small catalogue has short lists (N / nlist is about 40 at 3,000 items), where a fixed nprobe
    reads few vectors and misses neighbours; reading 2,048 vectors costs well under 0.1 ms at D=256.
    """
    ivf = getattr(index, "index", index)  # a GPU copy or the CPU index itself
    nlist, total = int(getattr(ivf, "nlist", 0)), int(index.ntotal)
    if nlist <= 0 or total <= 0:
        return nprobe
    return min(nlist, max(nprobe, math.ceil(IVF_MIN_SCANNED * nlist / total)))


def new_index(kind: str, dim: int, *, train: np.ndarray | None = None, nlist: int | None = None,
              hnsw_m: int = 32, hnsw_ef_construction: int = 80, seed: int = 0):
    """An empty index of `kind`; "ivf" is trained on `train` (M, D) first."""
    faiss = faiss_module()
    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = hnsw_ef_construction
        return faiss.IndexIDMap2(hnsw)
    assert kind == "ivf" and train is not None and len(train) > 0, "ivf needs training vectors"
    lists = ivf_list_count(len(train), nlist)
    index = faiss.index_factory(dim, f"IVF{lists},Flat", faiss.METRIC_INNER_PRODUCT)
    cap = lists * IVF_TRAIN_POINTS_PER_LIST
    sample = train if len(train) <= cap else train[np.random.default_rng(seed).choice(len(train), cap, replace=False)]
    index.cp.niter = IVF_KMEANS_ITERATIONS
    index.cp.seed = seed
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index


def search(index, queries: np.ndarray, k: int, *, kind: str, dead: np.ndarray | None = None,
           nprobe: int = 32, ef_search: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product, never returning labels in `dead`. queries (B, D) -> (B, k) twice."""
    faiss = faiss_module()
    selector = None
    if dead is not None and len(dead):
        selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.ascontiguousarray(dead, dtype=np.int64)))
    if kind == "ivf":
        nprobe = ivf_probe_count(index, nprobe)
        params = faiss.SearchParametersIVF(nprobe=nprobe, sel=selector) if selector else faiss.SearchParametersIVF(nprobe=nprobe)
    elif kind == "hnsw":
        ef = max(ef_search, k)
        params = faiss.SearchParametersHNSW(efSearch=ef, sel=selector) if selector else faiss.SearchParametersHNSW(efSearch=ef)
    else:
        params = faiss.SearchParameters(sel=selector) if selector else None
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if is_gpu_index(index):  # GPU indexes take no SearchParameters; tombstones never reach them
        if kind == "ivf":
            index.nprobe = nprobe
        return index.search(queries, k)
    return index.search(queries, k, params=params)


def gpu_count() -> int:
    faiss = faiss_module()
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def gpu_resources():
    """Scratch memory and streams for GPU indexes; keep it alive as long as they are."""
    return faiss_module().StandardGpuResources()


def to_gpu(index, resources):
    """A GPU copy of a flat or IVF index (device 0)."""
    return faiss_module().index_cpu_to_gpu(resources, 0, index)


def set_threads(n: int) -> None:
    """OpenMP threads faiss uses in this process (process-wide)."""
    if n < 1:
        raise ValueError(f"faiss threads must be >= 1, got {n}")
    faiss_module().omp_set_num_threads(n)


def is_gpu_index(index) -> bool:
    if not gpu_build():  # faiss-cpu: no GPU index can exist (and the attribute probe below is not free)
        return False
    return "Gpu" in type(index).__name__ or "Gpu" in type(getattr(index, "index", None)).__name__


@functools.cache
def gpu_build() -> bool:
    """Whether this faiss was built with GPU support (faiss-gpu)."""
    return hasattr(faiss_module(), "StandardGpuResources")


def serialize(index) -> np.ndarray:
    return faiss_module().serialize_index(index)  # (bytes,) uint8


def deserialize(buffer: np.ndarray):
    return faiss_module().deserialize_index(buffer)


def remove(index, labels: np.ndarray) -> int:
    """Remove labels from a flat or IVF index; returns how many were present."""
    faiss = faiss_module()
    return int(index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(labels, dtype=np.int64))))
