"""Offset-gap repair for the faust agents: read the records faust skipped, straight from the broker.

    message at offset N on topic[p] ──► GapFiller.missing_before(message) ──► records N0..N-1 faust skipped

After a crash or a rebalance, faust can hand an agent a prefetched message and then resume one
past it when it seeks to the committed offsets (faust-streaming/faust#216, #221). Its fetch loop
then counts the skipped offsets as done ("gap" acks) and commits past them, and it drops any
record below its read position, so seeking back from inside an agent does not bring them back.
The filler notices the jump (against the previous message of the partition, or, for the first
one, against the group's committed offset) and reads the missing range with a plain kafka-python
consumer outside the group. The agent processes those records before the message that revealed
the gap; if faust does deliver them later, they are duplicates the history table recognises.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from runtime.kafka import KafkaConfig, consumer

log = logging.getLogger(__name__)


def read_range(cfg: KafkaConfig, topic: str, partition: int, start: int, end: int, *,
               timeout_s: float = 30.0) -> list:
    """The records at offsets [start, end) of one partition (offsets without a record are skipped)."""
    from kafka import TopicPartition

    tp = TopicPartition(topic, partition)
    client = consumer(cfg, None)
    try:
        client.assign([tp])
        client.seek(tp, start)
        records, deadline = [], time.monotonic() + timeout_s
        while client.position(tp) < end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}[{partition}] {start}..{end - 1}: stuck at {client.position(tp)}")
            for batch in client.poll(timeout_ms=500).values():
                records.extend(r for r in batch if r.offset < end)
        return records
    finally:
        client.close()


def committed_offset(cfg: KafkaConfig, group_id: str, topic: str, partition: int) -> int | None:
    """The group's committed (next-to-read) offset for one partition, without joining the group."""
    from kafka import TopicPartition

    client = consumer(cfg, group_id)
    try:
        return client.committed(TopicPartition(topic, partition))
    finally:
        client.close()


class GapFiller:
    """Per-partition offset tracking for one worker incarnation.

    `committed` gives faust's own view of a partition's committed offset (None while unknown);
    the broker is asked when faust does not know it yet.
    """

    def __init__(self, cfg: KafkaConfig, group_id: str, committed: Callable[[str, int], int | None]):
        self.cfg, self.group_id, self._faust_committed = cfg, group_id, committed
        self.last: dict[tuple[str, int], int] = {}
        self.filled = 0  # records read back from gaps

    async def missing_before(self, message) -> list:
        """The records between the partition's previous message (or committed offset) and `message`."""
        tp = (message.topic, message.partition)
        previous = self.last.get(tp)
        if previous is None:
            committed = await self._committed(*tp)
            log.info("first message on %s[%d] at offset %d (committed %s)", *tp, message.offset, committed)
            previous = None if committed is None else committed - 1
        self.last[tp] = max(message.offset, self.last.get(tp, -1))
        if previous is None or message.offset <= previous + 1:
            return []
        start, end = previous + 1, message.offset
        log.warning("offset gap on %s[%d]: %d -> %d; reading %d..%d directly", *tp, previous, message.offset,
                    start, end - 1)
        records = await asyncio.get_running_loop().run_in_executor(
            None, lambda: read_range(self.cfg, message.topic, message.partition, start, end))
        self.filled += len(records)
        return records

    def forget(self, partitions) -> None:
        """Partitions given away: when one comes back, its first message is checked afresh."""
        for tp in partitions:
            self.last.pop((tp.topic, tp.partition), None)

    async def _committed(self, topic: str, partition: int) -> int | None:
        known = self._faust_committed(topic, partition)
        if known is not None:
            return known
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: committed_offset(self.cfg, self.group_id, topic, partition))
