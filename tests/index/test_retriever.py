"""The learned sequential retriever's replica: what it retrieves is what the trained SASRec ranks
highest, versions switch when a model arrives, and weights that do not fit are refused."""

import dataclasses

import numpy as np
import pytest
import torch

from index.candidates import CandidateConfig, FreshnessTracker, PopularityTracker, generate_candidates
from index.item_index import IndexConfig, ItemIndex
from index.retriever import (
    SequentialRetriever,
    load_retriever,
    retriever_records,
    save_retriever,
    signed_body,
    stack_retrievers,
)
from index.sasrec import SASRecConfig, SASRecScorer
from schemas.codec import decode, encode
from schemas.records import RetrieverModel

N_ITEMS = 30
KEYS = [f"item-{j}" for j in range(1, N_ITEMS + 1)]


def trained_folder(tmp_path, *, seed=0, hidden=16, content=None, attributes=None, towers=1):
    """SASRec (`towers` of them side by side) fitted for a few epochs on a log where item j is
    followed by item j + 1."""
    rng = np.random.default_rng(seed)
    train = []
    for _ in range(200):
        start = int(rng.integers(1, N_ITEMS - 6))
        train.append(list(range(start, start + 6)))
    config = SASRecConfig(hidden=hidden, max_len=8, max_epochs=40, time_budget_s=30, lr=1e-2, dropout=0.1, seed=seed,
                          towers=towers)
    scorer = SASRecScorer(train, N_ITEMS, config, content=content, attributes=attributes)
    folder = tmp_path / f"retriever-{seed}-{towers}{'' if content is None and attributes is None else '-side'}"
    save_retriever(scorer.model, KEYS, folder)
    return folder, scorer


def replica_of(*folders):
    retriever = SequentialRetriever()
    for folder in folders:
        vectors, model = retriever_records(folder)
        retriever.apply([decode(encode(v), type(v)) for v in vectors])  # as they arrive from the topic
        assert retriever.apply_model(decode(encode(model), RetrieverModel))
    return retriever


@pytest.mark.parametrize("towers", [1, 2])
def test_the_replica_retrieves_what_sasrec_ranks_highest(tmp_path, towers):
    folder, scorer = trained_folder(tmp_path, towers=towers)
    retriever = replica_of(folder)
    history = [3, 4, 5]
    scores = scorer.scores([history])[0]
    scores[history] = -np.inf
    expected = [KEYS[j - 1] for j in np.argsort(-scores)[:5]]
    got = retriever.candidates([KEYS[j - 1] for j in history], 5, exclude={KEYS[j - 1] for j in history})
    assert [item for item, _ in got] == expected
    assert got[0][0] == "item-6"  # it learned the log: after 3, 4, 5 comes 6
    assert np.allclose([s for _, s in got], np.sort(scores)[::-1][:5], atol=1e-4)


def test_a_saved_retriever_loads_back_with_the_same_version_and_weights(tmp_path):
    folder, scorer = trained_folder(tmp_path)
    version, model, keys = load_retriever(folder)
    assert keys == KEYS and version.startswith("sasrec-")
    assert save_retriever(model, keys, tmp_path / "again") == version
    for name, tensor in scorer.model.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name])


def test_stacked_retrievers_score_the_mean_of_all_their_towers_and_publish_as_one(tmp_path):
    one, one_scorer = trained_folder(tmp_path, seed=0, hidden=8)
    two, two_scorer = trained_folder(tmp_path, seed=1, hidden=16, towers=2)  # two 8-wide towers
    model, keys = stack_retrievers([one, two])
    assert keys == KEYS and (model.config.towers, model.config.hidden) == (3, 24)
    save_retriever(model, keys, tmp_path / "stacked")
    history = [3, 4, 5]
    want = (one_scorer.scores([history])[0] + 2 * two_scorer.scores([history])[0]) / 3  # a two-tower folder counts twice
    scores = replica_of(tmp_path / "stacked").candidates([KEYS[j - 1] for j in history], N_ITEMS)
    got = {item: score for item, score in scores}
    assert np.allclose([got[key] for key in KEYS if key in got], [want[j] for j in range(1, N_ITEMS + 1)
                                                                   if KEYS[j - 1] in got], atol=1e-4)


def test_only_retrievers_of_the_same_items_and_tower_shape_stack(tmp_path):
    one, _ = trained_folder(tmp_path, seed=0, hidden=8)
    wider, _ = trained_folder(tmp_path, seed=1, hidden=16)
    with pytest.raises(ValueError, match="same shape: hidden 8 vs 16"):
        stack_retrievers([one, wider])
    _, model, keys = load_retriever(one)
    save_retriever(model, keys[::-1], tmp_path / "reordered")
    with pytest.raises(ValueError, match="other items"):
        stack_retrievers([one, tmp_path / "reordered"])
    with pytest.raises(ValueError, match="at least two"):
        stack_retrievers([one])


@pytest.mark.parametrize("towers", [1, 2])
def test_a_retriever_trained_with_item_content_and_attributes_exports_as_a_plain_sasrec_that_ranks_the_same(
        tmp_path, towers):
    content = np.random.default_rng(5).normal(size=(N_ITEMS + 1, 12)).astype(np.float32)
    attributes = [[]] + [[j % 3, 3 + j % 5] if j % 4 else [] for j in range(1, N_ITEMS + 1)]  # some items have none
    folder, scorer = trained_folder(tmp_path, content=content, attributes=attributes, towers=towers)
    assert scorer.info()["content_dim"] == 12 and scorer.info()["attributes"] == 8
    _, plain, _ = load_retriever(folder)  # no content projection: it is folded into the item table
    assert plain.side_information == {"content_dim": None, "attributes": None}
    histories = [[3, 4, 5], [10, 11], [20]]
    padded = torch.tensor([[0] * (8 - len(h)) + h for h in histories])
    with torch.no_grad():
        got = (plain(padded)[:, -1] @ plain.item_table().T)[:, 1:]
    assert np.allclose(got.numpy(), scorer.scores(histories)[:, 1:], atol=1e-4)
    got = replica_of(folder).candidates(["item-3", "item-4", "item-5"], 1, exclude={"item-3", "item-4", "item-5"})
    assert got[0][0] == "item-6"


def test_content_vectors_and_attributes_must_cover_every_item():
    with pytest.raises(ValueError, match="content"):
        SASRecScorer([[1, 2, 3]], N_ITEMS, SASRecConfig(max_epochs=1), content=np.zeros((N_ITEMS, 4), np.float32))
    with pytest.raises(ValueError, match="attributes"):
        SASRecScorer([[1, 2, 3]], N_ITEMS, SASRecConfig(max_epochs=1), attributes=[[0]] * N_ITEMS)


def test_a_new_version_replaces_the_old_when_its_model_arrives(tmp_path):
    old, _ = trained_folder(tmp_path, seed=0)
    new, _ = trained_folder(tmp_path, seed=1)
    retriever = replica_of(old)
    old_version = retriever.version
    vectors, model = retriever_records(new)
    retriever.apply(vectors)  # the new vectors come first: the old version still answers
    assert retriever.version == old_version and retriever.candidates(["item-3"], 3)
    assert retriever.apply_model(model)
    assert retriever.version == model.version != old_version
    assert len(retriever) == N_ITEMS and retriever.candidates(["item-3"], 3)


def test_weights_that_do_not_match_the_declared_network_are_refused_and_the_current_version_stays(tmp_path):
    folder, _ = trained_folder(tmp_path)
    retriever = replica_of(folder)
    _, model = retriever_records(folder)
    for bad in (dataclasses.replace(model, version="wider", hidden=32, n_heads=1),
                dataclasses.replace(model, version="garbage", weights=b"not safetensors at all")):
        assert not retriever.apply_model(bad)
        assert retriever.version == model.version
    assert retriever.rejected == 2


def test_no_candidates_before_a_model_or_for_a_history_without_vectors(tmp_path):
    folder, _ = trained_folder(tmp_path)
    vectors, _ = retriever_records(folder)
    waiting = SequentialRetriever()
    waiting.apply(vectors)
    assert waiting.candidates(["item-3"], 5) == []
    assert replica_of(folder).candidates(["never-seen"], 5) == []


def test_candidates_reserve_slots_for_the_retriever_and_label_them_sequential(tmp_path):
    folder, _ = trained_folder(tmp_path)
    retriever = replica_of(folder)
    popularity = PopularityTracker()
    for key in KEYS[:10]:
        popularity.record(key, 0.0)
    config = CandidateConfig(k=8, covisit_k=0, sequential_k=4, popular_k=4, fresh_k=0)
    got = generate_candidates(["item-3", "item-4"], ItemIndex(IndexConfig(dim=4)), popularity,
                              FreshnessTracker(), config, now_s=0.0, retriever=retriever)
    sources = [c.source for c in got]
    assert sources[:4] == ["sequential"] * 4 and got[0].item_id == "item-5"
    assert len(got) == 8 and not {"item-3", "item-4"} & {c.item_id for c in got}


def test_every_candidate_carries_the_retrievers_affinity_whichever_source_proposed_it(tmp_path):
    folder, scorer = trained_folder(tmp_path)
    retriever = replica_of(folder)
    popularity = PopularityTracker()
    for key in KEYS[20:]:
        popularity.record(key, 0.0)
    config = CandidateConfig(k=6, covisit_k=0, sequential_k=3, popular_k=3, fresh_k=0)
    got = generate_candidates(["item-3", "item-4"], ItemIndex(IndexConfig(dim=4)), popularity,
                              FreshnessTracker(), config, now_s=0.0, retriever=retriever)
    assert {c.source for c in got} == {"sequential", "popular"}
    expected = scorer.scores([[3, 4]])[0]
    assert [c.affinity for c in got] == pytest.approx([expected[KEYS.index(c.item_id) + 1] for c in got], abs=1e-4)
    # an item the retriever has no vector for (newer than it) has no affinity
    assert retriever.query_for(["item-3"]).affinity(["item-5", "brand-new"])[1] is None
    # without a retriever nothing carries one
    plain = generate_candidates(["item-3"], ItemIndex(IndexConfig(dim=4)), popularity, FreshnessTracker(), config,
                                now_s=0.0)
    assert plain and all(c.affinity is None for c in plain)


def test_with_a_replica_content_neighbours_and_fresh_items_are_the_ones_newer_than_the_retriever(tmp_path):
    folder, _ = trained_folder(tmp_path)
    retriever = replica_of(folder)
    content = ItemIndex(IndexConfig(dim=4, kind="flat"))
    # the history's content neighbours: item-20 is known to the retriever, "brand-new" is not
    content.upsert(["item-3", "item-20", "brand-new"], np.array([[1, 0, 0, 0], [1, 0.1, 0, 0], [1, 0.2, 0, 0]]))
    fresh = FreshnessTracker()
    fresh.add("item-21", 0.0)
    fresh.add("also-new", 0.0)
    config = CandidateConfig(k=10, covisit_k=0, sequential_k=5, popular_k=0, fresh_k=2)  # content: 3
    got = generate_candidates(["item-3"], content, PopularityTracker(), fresh, config, now_s=1.0, retriever=retriever)
    by_source = {s: [c.item_id for c in got if c.source == s] for s in ("sequential", "visual", "fresh")}
    assert by_source["visual"] == ["brand-new"] and by_source["fresh"] == ["also-new"]
    # the three slots they leave join the retriever's: 8 of its items, item-20 and item-21 among them only
    # if it ranks them there
    assert len(by_source["sequential"]) == 8 == len(got) - 2
    assert by_source["sequential"] == [i for i, _ in retriever.candidates(["item-3"], 8, exclude={"item-3"})]
    every = generate_candidates(["item-3"], content, PopularityTracker(), fresh, dataclasses.replace(
        config, content_cold_only=False), now_s=1.0, retriever=retriever)
    assert {"item-20", "brand-new"} <= {c.item_id for c in every if c.source in ("visual", "sequential")}


@pytest.mark.parametrize("towers", [1, 2])
def test_the_model_record_carries_the_network_without_its_item_table(tmp_path, towers):
    from safetensors.torch import load

    folder, scorer = trained_folder(tmp_path, towers=towers)
    _, model = retriever_records(folder)
    body = load(model.weights)
    assert model.n_items == N_ITEMS and model.hidden == 16 and model.towers == towers
    tables = {name for name in scorer.model.state_dict() if name.endswith("item_emb.weight")}
    assert len(tables) == towers and set(body) == set(scorer.model.state_dict()) - tables


def test_the_models_topic_handler_skips_what_does_not_decode_and_applies_the_last_model(tmp_path):
    from types import SimpleNamespace

    from index.retriever import model_handler

    old, _ = trained_folder(tmp_path, seed=0)
    new, _ = trained_folder(tmp_path, seed=1)
    retriever = replica_of(old)
    vectors, model = retriever_records(new)
    retriever.apply(vectors)

    def message(value, offset):
        return SimpleNamespace(value=value, key=b"sequential", topic="retriever-models", partition=0, offset=offset)

    model_handler(retriever)([message(b"\x93garbage", 0), message(encode(model), 1), message(None, 2)])
    assert retriever.decode_errors == 1 and retriever.version == model.version


# ----------------------------------------------------------------------------- signed retrievers

KEY, OTHER_KEY = b"k" * 32, b"x" * 32


def test_a_signed_replica_switches_only_to_models_signed_with_its_key(tmp_path):
    folder, _ = trained_folder(tmp_path)
    vectors, unsigned = retriever_records(folder)
    _, forged = retriever_records(folder, signing_key=OTHER_KEY)
    _, signed = retriever_records(folder, signing_key=KEY)
    retriever = SequentialRetriever(signing_key=KEY)
    retriever.apply(vectors)
    for refused in (unsigned, forged, dataclasses.replace(signed, max_len=signed.max_len + 1)):
        assert not retriever.apply_model(refused)
        assert retriever.version is None and retriever.waiting is None
    assert retriever.rejected == 3
    assert retriever.apply_model(decode(encode(signed), RetrieverModel))  # as it arrives from the topic
    assert retriever.version == signed.version and retriever.candidates(["item-3"], 1)


def test_the_signature_covers_the_towers_and_a_one_tower_record_signs_as_before_towers_existed(tmp_path):
    folder, _ = trained_folder(tmp_path)
    _, one = retriever_records(folder, signing_key=KEY)
    assert b"towers" not in signed_body(one)  # records signed by earlier publishers still verify
    two = dataclasses.replace(one, hidden=16, towers=2)
    assert b'"towers": 2' in signed_body(two) and signed_body(two) != signed_body(one)


def test_a_signed_model_waits_until_its_vectors_are_all_there_and_match_its_digest(tmp_path):
    folder, _ = trained_folder(tmp_path)
    vectors, model = retriever_records(folder, signing_key=KEY)
    retriever = SequentialRetriever(signing_key=KEY)
    assert not retriever.apply_model(model)  # a replica starting up may read the model first
    assert retriever.waiting == model.version and retriever.version is None
    tampered = dataclasses.replace(vectors[0], vector=vectors[0].vector[::-1].copy())
    retriever.apply([tampered, *vectors[1:]])
    assert retriever.version is None  # all there, but one does not match the signed digest
    retriever.apply(vectors[:1])  # the genuine vector (compaction keeps the newest per item)
    assert retriever.version == model.version and retriever.waiting is None


def test_a_signed_versions_vectors_are_sealed_once_it_serves(tmp_path):
    folder, _ = trained_folder(tmp_path)
    vectors, model = retriever_records(folder, signing_key=KEY)
    retriever = SequentialRetriever(signing_key=KEY)
    retriever.apply(vectors)
    assert retriever.apply_model(model)
    before = retriever.candidates(["item-3", "item-4"], 5)
    changed = dataclasses.replace(vectors[5], vector=vectors[5].vector * 10)
    assert retriever.apply([changed, vectors[6]]) == 1  # the unchanged one is a no-op, the changed one refused
    assert retriever.rejected == 1 and retriever.candidates(["item-3", "item-4"], 5) == before


def test_a_forged_model_behind_a_signed_one_in_the_same_poll_does_not_hide_it(tmp_path):
    from types import SimpleNamespace

    from index.retriever import model_handler

    folder, _ = trained_folder(tmp_path)
    vectors, signed = retriever_records(folder, signing_key=KEY)
    forged = dataclasses.replace(signed, version="forged", signature=None)
    retriever = SequentialRetriever(signing_key=KEY)
    retriever.apply(vectors)

    def message(record, offset):
        return SimpleNamespace(value=encode(record), key=b"sequential", topic="retriever-models", partition=0,
                               offset=offset)

    model_handler(retriever)([message(signed, 0), message(forged, 1)])
    assert retriever.version == signed.version and retriever.rejected == 1


def test_at_most_two_versions_wait_beside_the_current_one(tmp_path):
    folder, _ = trained_folder(tmp_path)
    vectors, _ = retriever_records(folder)
    retriever = SequentialRetriever(signing_key=KEY)
    for n in range(4):  # vectors of four versions nobody published a model for
        retriever.apply([dataclasses.replace(v, encoder_id=f"junk-{n}") for v in vectors[:3]])
    assert retriever.stats()["held_versions"] == ["junk-2", "junk-3"]  # the newest
