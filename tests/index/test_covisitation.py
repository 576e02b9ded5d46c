"""Co-visitation learned one interaction at a time, and its place among the candidate sources."""

from __future__ import annotations

import random

import pytest

from index.candidates import (
    CandidateConfig,
    FreshnessTracker,
    PopularityTracker,
    generate_candidates,
    merge_sources,
    slots,
)
from index.covisitation import Covisitation, CovisitationConfig
from index.item_index import IndexConfig, ItemIndex

NO_DECAY = CovisitationConfig(half_life_events=None)


def replay(covisitation: Covisitation, sequences: list[list[str]]) -> None:
    for items in sequences:
        for pos, item in enumerate(items):
            covisitation.record(items[:pos], item)


def test_pairs_within_the_window_weigh_one_over_their_distance_forward_and_backward_weight_back():
    cov = Covisitation(CovisitationConfig(window=2, half_life_events=None, backward_weight=0.5))
    replay(cov, [["a", "b", "c", "d"]])
    assert cov.neighbours("b") == {"a": 0.5, "c": 1.0, "d": 0.5}  # a came before b: read backward
    assert cov.neighbours("a") == {"b": 1.0, "c": 0.5}  # d is 3 apart: outside the window
    assert cov.neighbours("d") == {"c": 0.5, "b": 0.25}


def test_with_backward_weight_one_pairs_count_the_same_both_ways():
    cov = Covisitation(CovisitationConfig(window=2, half_life_events=None, backward_weight=1.0))
    replay(cov, [["a", "b", "c", "d"]])
    assert cov.neighbours("b") == {"a": 1.0, "c": 1.0, "d": 0.5}


def test_a_repeated_item_is_not_its_own_neighbour():
    cov = Covisitation(NO_DECAY)
    replay(cov, [["a", "a", "b"]])
    assert "a" not in cov.neighbours("a") and cov.neighbours("a") == {"b": 1.5}  # 1 + 1/2, forward


def test_candidates_weigh_recent_history_items_more_and_never_return_history_items():
    cov = Covisitation(NO_DECAY)
    replay(cov, [["old", "x"], ["new", "y"], ["old", "new"]])
    got = cov.candidates(["old", "new"], 10)
    assert [item for item, _ in got] == ["y", "x"]  # y via the latest item (weight 1), x via the one before (1/2)
    assert dict(got) == {"y": pytest.approx(1.0), "x": pytest.approx(0.5)}
    assert cov.candidates(["old", "new"], 10, exclude={"y"}) == [("x", pytest.approx(0.5))]


def test_only_the_latest_recent_history_items_count():
    cov = Covisitation(CovisitationConfig(recent=1, half_life_events=None))
    replay(cov, [["old", "x"], ["new", "y"]])
    assert [item for item, _ in cov.candidates(["old", "new"], 10)] == ["y"]


def test_record_many_pairs_each_item_with_those_before_it():
    one, many = Covisitation(NO_DECAY), Covisitation(NO_DECAY)
    replay(one, [["a", "b", "c", "d"]])
    many.record_many(["a"], ["b", "c", "d"])
    assert all(one.neighbours(i) == many.neighbours(i) for i in "abcd")


def test_weights_halve_every_half_life_events():
    cov = Covisitation(CovisitationConfig(half_life_events=10))
    cov.record(["a"], "b")  # weight 1, recorded at event 0
    for i in range(9):
        cov.record([], f"filler{i}")
    cov.record(["a"], "c")  # weight 1, recorded at event 10
    row = cov.neighbours("a")
    assert row["b"] == pytest.approx(0.5) and row["c"] == pytest.approx(1.0)
    assert [item for item, _ in cov.candidates(["a"], 2)] == ["c", "b"]


def test_decay_stays_finite_past_many_half_lives():
    cov = Covisitation(CovisitationConfig(half_life_events=1))
    cov.record(["a"], "b")
    for i in range(1200):  # 2 ** 1200 overflows a float without rebasing
        cov.record([], f"f{i}")
    cov.record(["a"], "c")
    row = cov.neighbours("a")
    assert row["c"] == pytest.approx(1.0) and row.get("b", 0.0) < 1e-300


def test_rows_are_pruned_to_the_heaviest_neighbours():
    cov = Covisitation(CovisitationConfig(neighbours=3, prune_factor=2.0, half_life_events=None))
    for _ in range(5):
        cov.record(["hub"], "strong")
    for i in range(20):
        cov.record(["hub"], f"weak{i}")
    row = cov.neighbours("hub")
    assert len(row) <= 6 and "strong" in row and cov.pruned_rows > 0


def test_memory_stays_bounded_under_many_items():
    config = CovisitationConfig(neighbours=4, prune_factor=2.0, max_items=50, half_life_events=None)
    cov = Covisitation(config)
    rng = random.Random(0)
    for _ in range(20_000):
        cov.record([f"i{rng.randrange(5000)}" for _ in range(3)], f"i{rng.randrange(5000)}")
    assert len(cov) == 50 and cov.evicted_rows > 0
    assert cov.entries() <= 50 * config.max_row
    bounded = cov.memory_bytes()
    for _ in range(20_000):
        cov.record([f"j{rng.randrange(5000)}" for _ in range(3)], f"j{rng.randrange(5000)}")
    assert cov.memory_bytes() < 1.5 * bounded


def test_the_same_log_gives_the_same_candidates():
    rng = random.Random(1)
    log = [[f"i{rng.randrange(40)}" for _ in range(8)] for _ in range(200)]
    first, second = Covisitation(CovisitationConfig(neighbours=5)), Covisitation(CovisitationConfig(neighbours=5))
    replay(first, log)
    replay(second, log)
    for history in log[:20]:
        assert first.candidates(history, 10) == second.candidates(history, 10)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"window": 0}, "window"), ({"recent": 0}, "recent"), ({"neighbours": 0}, "neighbours"),
     ({"prune_factor": 0.5}, "prune_factor"), ({"max_items": 0}, "max_items"),
     ({"half_life_events": 0}, "half_life_events"), ({"half_life_events": float("inf")}, "half_life_events"),
     ({"backward_weight": -0.1}, "backward_weight"), ({"backward_weight": 1.5}, "backward_weight")],
)
def test_covisitation_config_rejects_invalid_field_naming_it(kwargs, field):
    with pytest.raises(ValueError, match=f"CovisitationConfig.{field}"):
        CovisitationConfig(**kwargs)


# Merging the sources


def test_each_source_gets_its_slots_and_visual_the_rest():
    config = CandidateConfig(k=12, covisit_k=4, sequential_k=2, popular_k=2, fresh_k=1)
    assert slots(config) == {"visual": 3, "covisit": 4, "sequential": 2, "popular": 2, "fresh": 1}
    ranked = {source: [(f"{source}{i}", float(-i)) for i in range(10)]
              for source in ("covisit", "sequential", "visual", "popular", "fresh")}
    got = merge_sources(ranked, slots(config), config.k)
    assert [(c.item_id, c.source) for c in got] == (
        [(f"covisit{i}", "covisit") for i in range(4)] + [(f"sequential{i}", "sequential") for i in range(2)]
        + [(f"visual{i}", "visual") for i in range(3)]
        + [("popular0", "popular"), ("popular1", "popular"), ("fresh0", "fresh")])


def test_slots_a_source_cannot_fill_go_to_the_others_in_merge_order():
    ranked = {"covisit": [("c0", 3.0), ("c1", 2.0)], "popular": [(f"p{i}", 1.0) for i in range(10)]}
    got = merge_sources(ranked, {"covisit": 1, "visual": 5, "popular": 2, "fresh": 2}, 10)
    assert [c.item_id for c in got] == ["c0", "c1"] + [f"p{i}" for i in range(8)]


def test_an_item_two_sources_propose_counts_once_for_the_first():
    ranked = {"covisit": [("x", 2.0)], "popular": [("x", 9.0), ("p", 1.0)]}
    got = merge_sources(ranked, {"covisit": 1, "popular": 1}, 5)
    assert [(c.item_id, c.source) for c in got] == [("x", "covisit"), ("p", "popular")]


def test_co_visited_items_lead_the_candidates_of_a_user_without_images():
    cov = Covisitation(NO_DECAY)
    replay(cov, [["a", "b"], ["a", "b"], ["a", "c"]])
    popularity = PopularityTracker(refresh_every=1)
    for item in ["p1", "p1", "b"]:
        popularity.record(item, 0.0)
    config = CandidateConfig(k=4, covisit_k=2, sequential_k=0, popular_k=1, fresh_k=0)
    got = generate_candidates(["a"], ItemIndex(IndexConfig(dim=4, kind="flat")), popularity, FreshnessTracker(),
                              config, now_s=0.0, covisitation=cov)
    assert [(c.item_id, c.source) for c in got] == [("b", "covisit"), ("c", "covisit"), ("p1", "popular")]


def test_candidate_config_rejects_more_reserved_slots_than_k():
    with pytest.raises(ValueError, match="covisit_k \\+ sequential_k \\+ popular_k \\+ fresh_k must be <= k=20"):
        CandidateConfig(k=20, covisit_k=15, sequential_k=0, popular_k=5, fresh_k=1)
