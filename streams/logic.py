"""The streams worker's logic as plain functions: no Kafka, no faust.

    Interaction(s) of one user + UserState  ──► new UserState, the events not seen before
    UserState + the new interactions        ──► co-visitation pairs (index.covisitation)
    UserState + Candidates                  ──► RerankRequest (request_id derived from the events)

A user's state is a small dict so faust's table can store it as JSON:
    {"items": [item ids, oldest first], "events": [recent event ids, oldest first],
     "active_ms": wall-clock time of the last interaction (set by the handler, for streams.retention)}
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from index.candidates import RetrievedItem
from index.covisitation import Covisitation
from schemas.records import Candidate, Interaction, RerankRequest


def empty_state() -> dict:
    return {"items": [], "events": []}


def apply_interactions(state: dict | None, interactions: Sequence[Interaction], *, history_len: int,
                       dedupe_window: int) -> tuple[dict, list[Interaction]]:
    """Append the interactions not seen before (by event id) to the user's bounded history."""
    state = state or empty_state()
    items, events = list(state["items"]), list(state["events"])
    known = set(events)
    fresh = []
    for interaction in sorted(interactions, key=lambda i: i.event_time_ms):
        if interaction.event_id in known:
            continue
        known.add(interaction.event_id)
        events.append(interaction.event_id)
        items.append(interaction.item_id)
        fresh.append(interaction)
    return {"items": items[-history_len:], "events": events[-dedupe_window:]}, fresh


def record_covisitation(covisitation: Covisitation, state: dict, fresh: Sequence[Interaction]) -> None:
    """Pair each new interaction's item with the user's items before it; `state` is the one
    `apply_interactions` returned with `fresh` (the new items are the last of its history)."""
    items = state["items"]
    new = [i.item_id for i in fresh][-len(items):] if items else []
    covisitation.record_many(items[: len(items) - len(new)], new)


def request_id_for(user_id: str, event_ids: Sequence[str]) -> str:
    """Deterministic in the user and the events, so a redelivery yields the same request id."""
    digest = hashlib.sha256("\x1f".join([user_id, *event_ids]).encode()).hexdigest()
    return f"rq-{digest[:32]}"


def build_request(user_id: str, state: dict, interactions: Sequence[Interaction],
                  candidates: Sequence[RetrievedItem], *, now_ms: int,
                  received_ms: int | None = None) -> RerankRequest:
    """The re-rank request reflecting `interactions` (the ones that triggered it)."""
    event_ids = [i.event_id for i in interactions]
    return RerankRequest(
        request_id=request_id_for(user_id, event_ids),
        user_id=user_id,
        history=state["items"],
        candidates=[Candidate(item_id=c.item_id, score=c.score, source=c.source, affinity=c.affinity)
                    for c in candidates],
        event_ids=event_ids,
        event_time_ms=max(i.event_time_ms for i in interactions),
        request_time_ms=now_ms,
        streams_received_time_ms=received_ms,
    )
