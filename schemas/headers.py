"""Kafka record headers the system gives a meaning to (values are bytes; absent means "no").

    vip5-backfill: b"1" on an `interactions` record: history only. The streams worker adds the
        interaction to the user's history, popularity and co-visitation like any other, but publishes
        no re-rank request for it. For importing a past log (`vip5 bench replay`, a migration, a
        backfill after an outage) without asking the model worker for recommendations nobody will
        read. The adapter trainer treats such records like any other interaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

BACKFILL = "vip5-backfill"


def backfill_headers() -> list[tuple[str, bytes]]:
    """Headers to send with a history-only interaction (kafka-python's `headers=` form)."""
    return [(BACKFILL, b"1")]


def is_backfill(headers: Mapping[str, bytes] | Iterable[tuple[str, bytes]] | None) -> bool:
    """True when `headers` (faust's dict or kafka-python's list of pairs) mark a history-only record."""
    if not headers:
        return False
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return any(key == BACKFILL and value == b"1" for key, value in pairs)
