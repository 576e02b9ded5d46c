from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from index.candidates import (
    CandidateConfig,
    FreshnessTracker,
    PopularityTracker,
    fuse_behavioural,
    generate_candidates,
    history_query,
    merge_candidates,
)
from index.item_index import IndexConfig, ItemIndex

DIM = 16
NOW_S = 1_000_000.0


def two_cluster_catalogue(per_cluster: int = 30) -> ItemIndex:
    """Items a0.. near one direction and b0.. near an orthogonal one."""
    rng = np.random.default_rng(0)
    axis_a, axis_b = np.eye(DIM)[0], np.eye(DIM)[1]
    index = ItemIndex(IndexConfig(dim=DIM, kind="flat"))
    for name, axis in (("a", axis_a), ("b", axis_b)):
        rows = axis + 0.2 * rng.standard_normal((per_cluster, DIM))
        index.upsert([f"{name}{i}" for i in range(per_cluster)], rows)
    return index


@pytest.fixture()
def trackers() -> tuple[PopularityTracker, FreshnessTracker]:
    popularity = PopularityTracker(half_life_s=3600)
    for i, count in enumerate([5, 3, 1]):
        for _ in range(count):
            popularity.record(f"a{i}", NOW_S - 60)
    freshness = FreshnessTracker(max_age_s=86400)
    freshness.add("b29", NOW_S - 10)
    return popularity, freshness


def test_new_user_gets_popular_then_fresh_items(trackers):
    popularity, freshness = trackers
    config = CandidateConfig(k=10, covisit_k=0, sequential_k=0, popular_k=2, fresh_k=1)
    got = generate_candidates([], two_cluster_catalogue(), popularity, freshness, config, now_s=NOW_S)
    assert [(c.item_id, c.source) for c in got] == [("a0", "popular"), ("a1", "popular"), ("a2", "popular"),
                                                   ("b29", "fresh")]  # grouped by source


def test_user_with_history_gets_visual_neighbours_and_never_seen_items(trackers):
    popularity, freshness = trackers
    config = CandidateConfig(k=20, covisit_k=0, sequential_k=0, popular_k=2, fresh_k=1)
    history = ["b3", "b4"]
    got = generate_candidates(history, two_cluster_catalogue(), popularity, freshness, config, now_s=NOW_S,
                              exclude={"b5"})
    ids = [c.item_id for c in got]
    assert len(ids) == 20 == len(set(ids))
    assert not {"b3", "b4", "b5"} & set(ids)
    visual = [c for c in got if c.source == "visual"]
    assert len(visual) == 17 and all(c.item_id.startswith("b") for c in visual)
    assert [c.score for c in visual] == sorted((c.score for c in visual), reverse=True)
    assert {c.source for c in got} == {"visual", "popular", "fresh"}


def test_recent_history_items_weigh_more_in_the_query():
    index = two_cluster_catalogue()
    config = CandidateConfig(k=10, covisit_k=0, sequential_k=0, popular_k=0, fresh_k=0, recency_half_life=1.0)
    query = history_query(["a1", "a2", "b1"], index, config)  # latest is b1: weights 0.25, 0.5, 1
    assert query @ np.eye(DIM)[1] > query @ np.eye(DIM)[0]
    got = generate_candidates(["a1", "a2", "b1"], index, PopularityTracker(), FreshnessTracker(), config, now_s=NOW_S)
    assert got[0].item_id.startswith("b")


def test_a_new_product_reaches_users_before_any_interaction(trackers):
    popularity, freshness = trackers
    index = two_cluster_catalogue()
    index.upsert(["new-product"], np.eye(DIM)[5:6])  # unlike anything the user saw
    freshness.add("new-product", NOW_S - 1)
    config = CandidateConfig(k=5, covisit_k=0, sequential_k=0, popular_k=1, fresh_k=1)
    got = generate_candidates(["a3"], index, popularity, freshness, config, now_s=NOW_S)
    assert ("new-product", "fresh") in [(c.item_id, c.source) for c in got]


def test_a_new_product_is_found_visually_once_embedded():
    index = two_cluster_catalogue()
    index.upsert(["new-a"], np.eye(DIM)[0:1])  # exactly on cluster a's axis
    config = CandidateConfig(k=3, covisit_k=0, sequential_k=0, popular_k=0, fresh_k=0)
    got = generate_candidates(["a1", "a2"], index, PopularityTracker(), FreshnessTracker(), config, now_s=NOW_S)
    assert "new-a" in [c.item_id for c in got]


def test_history_items_without_vectors_are_ignored():
    index = two_cluster_catalogue()
    config = CandidateConfig(k=3, covisit_k=0, sequential_k=0, popular_k=0, fresh_k=0)
    assert history_query(["unknown"], index, config) is None
    got = generate_candidates(["unknown", "b2"], index, PopularityTracker(), FreshnessTracker(), config, now_s=NOW_S)
    assert all(c.item_id.startswith("b") for c in got)


def test_popularity_halves_every_half_life():
    tracker = PopularityTracker(half_life_s=100, refresh_every=1)
    tracker.record("old", 0.0)
    tracker.record("old", 0.0)
    tracker.record("new", 100.0)
    (first, s1), (second, s2) = tracker.top(2, now_s=100.0)
    assert (first, second) == ("old", "new") and s1 == pytest.approx(1.0) and s2 == pytest.approx(1.0)
    tracker.record("new", 200.0)
    assert tracker.top(1, now_s=200.0) == [("new", pytest.approx(1.5))]
    tracker.record("later", 200.0 + 600 * 100)  # far in the future: rebased, still finite
    assert tracker.top(1, now_s=200.0 + 600 * 100)[0][0] == "later"


def test_popularity_ranking_lags_at_most_refresh_every_records():
    tracker = PopularityTracker(half_life_s=100, refresh_every=3)
    tracker.record("a", 0.0)
    assert tracker.top(1, now_s=0.0)[0][0] == "a"
    tracker.record("b", 0.0)
    tracker.record("b", 0.0)
    assert tracker.top(1, now_s=0.0)[0][0] == "a"  # 2 records since the ranking: cached
    tracker.record("b", 0.0)
    assert tracker.top(1, now_s=0.0) == [("b", pytest.approx(3.0))]


def test_freshness_forgets_items_past_max_age_and_keeps_the_newest():
    tracker = FreshnessTracker(max_age_s=100, max_items=3)
    for i, t in enumerate([0, 50, 60, 70]):
        tracker.add(f"i{i}", t)
    assert [item for item, _ in tracker.recent(10, now_s=155)] == ["i3", "i2"]  # i0 evicted, i1 too old
    tracker.discard("i3")
    assert tracker.recent(1, now_s=155, exclude={"i2"}) == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"k": 0}, "k"), ({"k": 5, "covisit_k": 0, "sequential_k": 0, "popular_k": 6}, "popular_k"),
     ({"k": 5, "covisit_k": 6}, "covisit_k"), ({"k": 5, "covisit_k": 0, "sequential_k": 6}, "sequential_k"),
     ({"fresh_k": -1}, "fresh_k"),
     ({"history_len": 0}, "history_len"), ({"recency_half_life": 0}, "recency_half_life")],
)
def test_candidate_config_rejects_invalid_field_naming_it(kwargs, field):
    with pytest.raises(ValueError, match=f"CandidateConfig.{field}"):
        CandidateConfig(**kwargs)


def test_with_a_retriever_the_behavioural_slots_go_to_the_best_by_affinity_plus_co_visitation():
    covisit = [("a", 3.0), ("b", 1.0), ("p", -1.0)]  # "p": a generator's own fill, not co-visited
    sequential = [("x", 5.0), ("a", 4.0), ("y", 1.0)]
    visual = [("v", 0.9)]  # newer than the retriever, like "b": a content neighbour keeps its slot
    affinity = {"a": 1.0, "x": 2.0, "y": 0.5}  # "b" is newer than the retriever: the lowest, 0.5

    def given(items):
        return [affinity.get(i) for i in items]

    config = CandidateConfig(k=4, covisit_k=1, sequential_k=2, popular_k=0, fresh_k=0)
    # a: 1 + ln 4 = 2.39, x: 2, b: 0.5 + ln 2 = 1.19, y: 0.5 -> the 3 behavioural slots: a, x, b
    fused_covisit, fused_sequential, reserved = fuse_behavioural(covisit, sequential, given, config)
    assert fused_covisit == [("a", 3.0), ("b", 1.0), ("p", -1.0)] and fused_sequential == [("x", 5.0), ("y", 1.0)]
    assert reserved == {"covisit": 2, "sequential": 1}
    merged = merge_candidates({"covisit": covisit, "sequential": sequential, "visual": visual}, config, given)
    assert [(c.item_id, c.source) for c in merged] == [("a", "covisit"), ("b", "covisit"), ("x", "sequential"),
                                                       ("v", "visual")]
    # without fusion each source keeps its own slots: the retriever's y gets in, b does not
    fixed = merge_candidates({"covisit": covisit, "sequential": sequential, "visual": visual},
                             dataclasses.replace(config, covisit_fusion=None), given)
    assert [c.item_id for c in fixed] == ["a", "x", "y", "v"]


def test_with_a_retriever_content_and_fresh_slots_go_to_items_it_does_not_know_and_the_rest_to_the_joint_ranking():
    covisit = [("a", 3.0)]
    sequential = [("x", 5.0), ("y", 4.0), ("z", 3.0), ("w", 2.0)]
    visual = [("y", 0.9), ("new-1", 0.8)]  # y is known to the retriever: it ranks it itself
    fresh = [("new-2", -5.0), ("z", -9.0)]
    affinity = {"a": 1.0, "x": 2.0, "y": 1.5, "z": 0.4, "w": 0.3}

    def given(items):
        return [affinity.get(i) for i in items]

    config = CandidateConfig(k=6, covisit_k=1, sequential_k=1, popular_k=0, fresh_k=2)  # visual: 2
    ranked = {"covisit": covisit, "sequential": sequential, "visual": visual, "fresh": fresh}
    merged = merge_candidates(ranked, config, given)
    # one cold content neighbour and one cold fresh item: 2 slots of theirs join the joint ranking,
    # which then takes 4: x 2, y 1.5, a 1 + ln 4, z 0.4 (w is fifth)
    assert [(c.item_id, c.source) for c in merged] == [
        ("a", "covisit"), ("x", "sequential"), ("y", "sequential"), ("z", "sequential"),
        ("new-1", "visual"), ("new-2", "fresh")]
    # the old behaviour, for a deployment that wants content neighbours of known items too
    everything = merge_candidates(ranked, dataclasses.replace(config, content_cold_only=False), given)
    assert [(c.item_id, c.source) for c in everything] == [
        ("a", "covisit"), ("x", "sequential"), ("y", "visual"), ("new-1", "visual"), ("new-2", "fresh"),
        ("z", "fresh")]
    # without a retriever nothing is known or unknown: every source keeps its list
    plain = merge_candidates(ranked, config, None)
    assert {c.item_id for c in plain if c.source in ("visual", "fresh")} == {"y", "new-1", "new-2", "z"}
