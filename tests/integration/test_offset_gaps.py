"""Records faust skipped are read back from the broker before the message that revealed the gap."""

import asyncio
from types import SimpleNamespace

import pytest
from kafka import OffsetAndMetadata, TopicPartition

from runtime.kafka import consumer, create_topics, producer
from schemas.topics import INTERACTIONS
from streams.gaps import GapFiller, read_range

pytestmark = pytest.mark.integration


@pytest.fixture()
def one_partition(kafka_cfg, topics):
    """An interactions topic with one partition holding values 0..9 at offsets 0..9."""
    topics = topics.__class__(prefix=topics.prefix, partitions=1)
    create_topics(kafka_cfg, topics, (INTERACTIONS,))
    name = topics.name(INTERACTIONS)
    client = producer(kafka_cfg)
    for n in range(10):
        client.send(name, key=b"u", value=str(n).encode(), partition=0)
    client.flush()
    client.close()
    return name


def at(topic: str, offset: int):
    return SimpleNamespace(topic=topic, partition=0, offset=offset)


def offsets(records) -> list[int]:
    return [r.offset for r in records]


def test_read_range_returns_exactly_the_requested_offsets(kafka_cfg, one_partition):
    records = read_range(kafka_cfg, one_partition, 0, 3, 7)
    assert offsets(records) == [3, 4, 5, 6]
    assert [r.value for r in records] == [b"3", b"4", b"5", b"6"]


def test_a_jump_between_two_messages_yields_the_records_in_between(kafka_cfg, one_partition):
    filler = GapFiller(kafka_cfg, "g-unused", committed=lambda t, p: 0)
    assert asyncio.run(filler.missing_before(at(one_partition, 0))) == []
    assert asyncio.run(filler.missing_before(at(one_partition, 1))) == []
    assert offsets(asyncio.run(filler.missing_before(at(one_partition, 4)))) == [2, 3]
    assert asyncio.run(filler.missing_before(at(one_partition, 2))) == []  # a late re-delivery is no gap
    assert asyncio.run(filler.missing_before(at(one_partition, 5))) == []
    assert filler.filled == 2


def test_a_first_message_past_the_committed_offset_yields_the_skipped_records(kafka_cfg, one_partition):
    group = "gap-readers"
    committer = consumer(kafka_cfg, group)
    committer.commit({TopicPartition(one_partition, 0): OffsetAndMetadata(5, "", -1)})
    committer.close()

    # faust does not know the committed offset yet: the group's committed offset is asked for
    filler = GapFiller(kafka_cfg, group, committed=lambda t, p: None)
    assert offsets(asyncio.run(filler.missing_before(at(one_partition, 7)))) == [5, 6]

    # faust knows it: no broker round trip needed, same answer
    known = GapFiller(kafka_cfg, "g-unused", committed=lambda t, p: 5)
    assert offsets(asyncio.run(known.missing_before(at(one_partition, 7)))) == [5, 6]


def test_a_partition_given_away_is_checked_afresh_when_it_comes_back(kafka_cfg, one_partition):
    filler = GapFiller(kafka_cfg, "g-unused", committed=lambda t, p: 8)
    asyncio.run(filler.missing_before(at(one_partition, 2)))
    filler.forget([TopicPartition(one_partition, 0)])
    assert asyncio.run(filler.missing_before(at(one_partition, 8))) == []  # resumes at the committed offset
