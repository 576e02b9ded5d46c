"""The catalogue replica applies each embedding on its own: one the index refuses is skipped."""

import numpy as np

from index.item_index import IndexConfig
from index.replica import CatalogReplica
from schemas.records import ItemEmbedding


def embedding(item_id: str, vector) -> ItemEmbedding:
    return ItemEmbedding(item_id=item_id, vector=np.asarray(vector, np.float32), encoder_id="e", event_time_ms=1,
                         embedded_time_ms=2)


def test_a_vector_the_index_refuses_is_skipped_and_its_neighbours_applied():
    replica = CatalogReplica(IndexConfig(dim=4, kind="flat"))
    bad = embedding("bad", [1, 0, 0, 0])
    object.__setattr__(bad, "vector", np.zeros(4, np.float32))  # as if it had slipped past the schema
    applied = replica.apply([embedding("a", [1, 2, 3, 4]), bad, embedding("b", [4, 3, 2, 1])])
    assert applied == 2 and replica.rejected == 1
    assert sorted(replica.index.ids()) == ["a", "b"] and "bad" not in replica.freshness._added
