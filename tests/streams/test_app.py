"""The faust app's wiring that can be checked without a broker."""

from kafka.partitioner.default import murmur2

from streams.app import key_partition


def test_a_user_keys_partition_is_the_one_our_producers_put_its_interactions_in():
    # kafka-python (runtime.kafka's producers) places a key at murmur2(key) & 0x7fffffff % partitions;
    # the restore callback keeps a user's history only where key_partition says this worker owns it
    keys = [f"user-{n}".encode() for n in range(500)] + [b"", "ü-\u4e2d".encode()]
    for partitions in (1, 3, 6):
        assert [key_partition(k, partitions) for k in keys] == [(murmur2(k) & 0x7FFFFFFF) % partitions for k in keys]
