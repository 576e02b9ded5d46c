from __future__ import annotations

import json

import numpy as np
import pytest

from index.item_index import IndexConfig, ItemIndex
from index.snapshot import POINTER
from tests.index.conftest import clustered
from tests.index.test_item_index import DIM, KINDS, make_index


def assert_same_index(a: ItemIndex, b: ItemIndex, queries: np.ndarray) -> None:
    assert sorted(a.ids()) == sorted(b.ids())
    assert a.stats() == b.stats()
    va, vb = a.get_vectors(a.ids()), b.get_vectors(a.ids())
    assert all(np.array_equal(va[i], vb[i]) for i in va)
    assert a.search(queries, 10, exclude=[{"item-1"}] * len(queries)) == b.search(queries, 10, exclude=[{"item-1"}] * len(queries))


@pytest.mark.parametrize("kind", KINDS)
def test_restore_gives_an_index_equal_to_the_snapshot(kind, tmp_path):
    index, ids, _ = make_index(kind, 500)
    index.remove(ids[:7])  # HNSW: tombstones travel with the snapshot
    index.upsert(["item-9"], clustered(1, DIM, seed=4))
    index.snapshot(tmp_path / "snap")
    restored = ItemIndex.restore(tmp_path / "snap")
    assert restored.config == index.config
    assert_same_index(index, restored, clustered(20, DIM, seed=8))
    restored.upsert(["late"], clustered(1, DIM, seed=6))  # labels continue, no collision
    assert restored.search_one(clustered(1, DIM, seed=6)[0], 1)[0].item_id == "late"


def test_a_new_snapshot_replaces_the_old_one_through_the_pointer(tmp_path):
    root = tmp_path / "snap"
    index, ids, _ = make_index("flat", 50)
    first = index.snapshot(root)
    index.remove(ids[:10])
    (root / ".tmp-crashed-writer").mkdir()  # left behind by a crash mid-write
    second = index.snapshot(root)
    assert json.loads((root / POINTER).read_text())["current"] == second.name
    assert not first.exists() and not (root / ".tmp-crashed-writer").exists()
    assert len(ItemIndex.restore(root)) == 40


def test_restore_refuses_a_corrupted_snapshot(tmp_path):
    index, _, _ = make_index("flat", 50)
    folder = index.snapshot(tmp_path)
    with open(folder / "vectors.npy", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ValueError, match="checksum mismatch"):
        ItemIndex.restore(tmp_path)


def test_restore_without_a_snapshot_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no snapshot"):
        ItemIndex.restore(tmp_path)


def test_restore_rejects_a_config_of_another_dimension(tmp_path):
    index, _, _ = make_index("flat", 20)
    index.snapshot(tmp_path)
    with pytest.raises(ValueError, match="IndexConfig.dim 16"):
        ItemIndex.restore(tmp_path, IndexConfig(dim=16))


def test_restore_accepts_new_runtime_settings(tmp_path):
    index, _, vectors = make_index("ivf", 500)
    index.snapshot(tmp_path)
    wider = ItemIndex.restore(tmp_path, IndexConfig(dim=DIM, kind="ivf", approx_min_items=200, ivf_nprobe=64))
    assert wider.config.ivf_nprobe == 64
    assert wider.search_one(vectors[5], 1)[0].item_id == "item-5"


def test_empty_index_snapshots_and_restores(tmp_path):
    index = ItemIndex(IndexConfig(dim=DIM))
    index.snapshot(tmp_path)
    restored = ItemIndex.restore(tmp_path)
    assert len(restored) == 0 and restored.search_one(np.ones(DIM), 5) == []
