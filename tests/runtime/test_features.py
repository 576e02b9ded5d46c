from types import SimpleNamespace

import numpy as np

from runtime.features import ItemFeatures, feature_handler
from schemas.codec import encode
from schemas.records import ItemEmbedding


def embedding(item_id: str, value: float, dim: int = 4) -> ItemEmbedding:
    return ItemEmbedding(item_id=item_id, vector=np.full(dim, value, np.float32), encoder_id="test",
                         event_time_ms=1, embedded_time_ms=2)


def message(value, key: bytes = b"", offset: int = 0):
    return SimpleNamespace(topic="t", partition=0, offset=offset, key=key, value=value)


def test_item_features_returns_known_items_only():
    store = ItemFeatures(4)
    assert store.apply([embedding("a", 1.0), embedding("b", 2.0)]) == 2
    found = store.features(["a", "missing"])
    assert list(found) == ["a"] and found["a"].dtype == np.float32 and found["a"][0] == 1.0
    assert sorted(store.ids()) == ["a", "b"] and len(store) == 2 and "b" in store


def test_item_features_skip_records_of_another_dimension():
    store = ItemFeatures(4)
    assert store.apply([embedding("a", 1.0), embedding("wide", 1.0, dim=8)]) == 1
    assert store.rejected == 1 and "wide" not in store


def test_handler_applies_last_record_per_item_tombstones_and_counts_bad_bytes():
    store = ItemFeatures(4)
    handle = feature_handler(store)
    handle([message(encode(embedding("a", 1.0))), message(encode(embedding("b", 1.0))),
            message(encode(embedding("a", 3.0))), message(b"\x00not msgpack")])
    assert store.features(["a"])["a"][0] == 3.0 and store.decode_errors == 1
    handle([message(None, key=b"b")])
    assert "b" not in store and "a" in store
