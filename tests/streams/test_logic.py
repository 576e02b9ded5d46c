"""The streams worker's plain logic: bounded history, duplicate events, deterministic request ids."""

import pytest

from index.candidates import RetrievedItem
from schemas.records import Interaction
from streams.logic import apply_interactions, build_request, request_id_for


def click(event_id: str, item: str, t: int, user: str = "u1") -> Interaction:
    return Interaction(event_id=event_id, user_id=user, item_id=item, kind="click", event_time_ms=t)


def test_history_appends_in_event_time_order_and_stays_bounded():
    state, fresh = apply_interactions(None, [click("e2", "b", 2), click("e1", "a", 1), click("e3", "c", 3)],
                                      history_len=2, dedupe_window=10)
    assert state["items"] == ["b", "c"]
    assert [i.event_id for i in fresh] == ["e1", "e2", "e3"]


def test_duplicate_event_ids_do_not_change_the_history():
    state, _ = apply_interactions(None, [click("e1", "a", 1)], history_len=5, dedupe_window=10)
    again, fresh = apply_interactions(state, [click("e1", "a", 1), click("e2", "b", 2)], history_len=5,
                                      dedupe_window=10)
    assert again["items"] == ["a", "b"] and [i.event_id for i in fresh] == ["e2"]


def test_dedupe_window_bounds_the_remembered_event_ids():
    state, _ = apply_interactions(None, [click(f"e{i}", "a", i) for i in range(10)], history_len=50,
                                  dedupe_window=3)
    assert state["events"] == ["e7", "e8", "e9"]


def test_request_id_is_the_same_for_a_redelivered_event_and_differs_otherwise():
    assert request_id_for("u1", ["e1"]) == request_id_for("u1", ["e1"])
    assert request_id_for("u1", ["e1"]) != request_id_for("u1", ["e2"])
    assert request_id_for("u1", ["e1"]) != request_id_for("u2", ["e1"])


def test_request_carries_history_candidates_events_and_latest_event_time():
    events = [click("e1", "a", 10), click("e2", "b", 20)]
    state, fresh = apply_interactions(None, events, history_len=5, dedupe_window=10)
    request = build_request("u1", state, fresh, [RetrievedItem("x", 0.5, "visual"), RetrievedItem("y", 0.1, "fresh")],
                            now_ms=30)
    assert request.history == ("a", "b") and request.event_ids == ("e1", "e2")
    assert [(c.item_id, c.source) for c in request.candidates] == [("x", "visual"), ("y", "fresh")]
    assert request.event_time_ms == 20 and request.request_time_ms == 30
    assert request.request_id == request_id_for("u1", ["e1", "e2"])


def test_an_interaction_updates_co_visitation_and_shows_in_the_next_requests_candidates():
    """The interactions handler's steps, in its order: history, co-visitation, candidates, request."""
    from index.candidates import CandidateConfig, PopularityTracker
    from index.covisitation import Covisitation
    from index.item_index import IndexConfig
    from index.replica import CatalogReplica
    from streams.logic import record_covisitation

    replica = CatalogReplica(IndexConfig(dim=4, kind="flat", use_gpu=False))
    popularity, covisitation = PopularityTracker(), Covisitation()
    config = CandidateConfig(k=5, covisit_k=3, sequential_k=0, popular_k=1, fresh_k=0)
    states: dict[str, dict] = {}

    def handle(interaction: Interaction):
        state, fresh = apply_interactions(states.get(interaction.user_id), [interaction], history_len=5,
                                          dedupe_window=10)
        states[interaction.user_id] = state
        record_covisitation(covisitation, state, fresh)
        candidates = replica.candidates(state["items"], popularity, config, now_s=0.0, covisitation=covisitation)
        reflected = fresh or [interaction]  # a redelivery is published again under the same id
        return build_request(interaction.user_id, state, reflected, candidates, now_ms=1) if candidates else None

    assert handle(click("e1", "lipstick", 1, user="u1")) is None  # nothing known yet: no candidates
    handle(click("e2", "mascara", 2, user="u1"))
    assert covisitation.neighbours("lipstick") == {"mascara": pytest.approx(1.0)}
    request = handle(click("e3", "lipstick", 3, user="u2"))
    assert [(c.item_id, c.source) for c in request.candidates] == [("mascara", "covisit")]
    again = handle(click("e3", "lipstick", 3, user="u2"))  # a redelivery records nothing new
    assert again.request_id == request.request_id
    assert covisitation.stats()["events"] == 3  # e1, e2, e3 once each
