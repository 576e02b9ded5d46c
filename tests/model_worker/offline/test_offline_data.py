"""Loaders, leave-one-out, item numbering and negatives on the vendored real data."""

import json

import numpy as np
import pytest

from model_worker.offline.data import (
    DataConfig,
    RecData,
    explanation_sentence,
    leave_one_out,
    load_amazon_reviews,
    load_data,
    load_p5_folder,
    reindex_items,
    sample_negatives,
    training_split,
)


def test_p5_folder_loads_users_items_and_titles(beauty_dir):
    data = load_p5_folder(beauty_dir)
    assert (data.n_users, data.n_items, data.n_interactions) == (250, 2468, 3579)
    assert data.sequences[0] == (1, 2, 3, 4, 5)  # first line of the P5 file: "1 1 2 3 4 5"
    maps = json.loads((beauty_dir / "datamaps.json").read_text())
    assert data.item_keys[0] == maps["id2item"]["1"] and data.user_keys[0] == maps["id2user"]["1"]
    assert data.title(1) and data.title(1) != "item_1"


def test_raw_reviews_give_time_ordered_sequences_and_explanations(reviews_file):
    data = load_amazon_reviews(reviews_file, core=1)
    assert data.n_users == 10 and data.n_interactions == 54
    assert all(len(s) >= 5 for s in data.sequences)
    assert len(data.explanations) == 54
    assert {e.split for e in data.explanations} <= {"train", "valid", "test"}
    assert all(0 < len(e.text.split()) <= 25 for e in data.explanations)
    assert all(e.text == e.text.lower() for e in data.explanations)


def test_raw_reviews_k_core_drops_sparse_items(reviews_file):
    with pytest.raises(ValueError, match="core"):
        load_amazon_reviews(reviews_file, core=5)  # the cut is not 5-core on items


def test_explanation_sentence_prefers_a_short_full_sentence():
    text = "Great. This cable is sturdy and sounds clean on stage! I would buy it again."
    assert explanation_sentence(text) == "this cable is sturdy and sounds clean on stage !"
    assert explanation_sentence("", "Five stars") == "five stars"


def test_leave_one_out_holds_out_last_two_items():
    split = leave_one_out([(1, 2, 3, 4), (5, 6)])
    assert split.train == ((1, 2), (5, 6))
    assert [(e.user, e.history, e.target) for e in split.valid] == [(1, (1, 2), 3)]
    assert [(e.user, e.history, e.target) for e in split.test] == [(1, (1, 2, 3), 4)]


def test_random_reindexing_is_a_seeded_bijection_that_differs_from_original(beauty_dir):
    original = load_p5_folder(beauty_dir)
    shuffled = reindex_items(original, numbering="random", seed=7)
    assert shuffled.numbering == "random"
    old_to_new = {}
    for old_seq, new_seq in zip(original.sequences, shuffled.sequences, strict=True):
        for old, new in zip(old_seq, new_seq, strict=True):
            assert old_to_new.setdefault(old, new) == new
    assert sorted(old_to_new.values()) == sorted(old_to_new)  # a permutation of the same ids
    assert sum(o != n for o, n in old_to_new.items()) > 0.9 * len(old_to_new)
    for old, new in old_to_new.items():  # keys and titles follow their items
        assert shuffled.item_keys[new - 1] == original.item_keys[old - 1]
        assert shuffled.item_titles[new - 1] == original.item_titles[old - 1]
    again = reindex_items(original, numbering="random", seed=7)
    assert again.sequences == shuffled.sequences


def test_load_data_defaults_to_random_numbering(beauty_dir):
    assert load_data(DataConfig(str(beauty_dir))).numbering == "random"
    assert load_data(DataConfig(str(beauty_dir), numbering="original")).sequences[0] == (1, 2, 3, 4, 5)


def test_data_config_names_the_bad_field(beauty_dir):
    with pytest.raises(ValueError, match="numbering"):
        DataConfig(str(beauty_dir), numbering="sorted")
    with pytest.raises(ValueError, match="core"):
        DataConfig(str(beauty_dir), core=0)


def test_image_features_follow_items_through_reindexing(beauty_dir, tmp_path):
    keys = load_p5_folder(beauty_dir).item_keys
    features = np.arange(3 * 4, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "feats.npy", features)
    (tmp_path / "feats_ids.txt").write_text(f"{keys[0]}\n{keys[9]}\nNOT_AN_ITEM\n")
    data = load_data(DataConfig(str(beauty_dir), image_features=str(tmp_path / "feats.npy")))
    assert int(data.has_image.sum()) == 2 and not data.has_image[0]
    row = data.item_keys.index(keys[9]) + 1
    assert data.has_image[row] and np.array_equal(data.image_features[row], features[1])


def test_negatives_avoid_touched_items_and_are_reproducible(beauty_dir):
    data = load_p5_folder(beauty_dir)
    for user, items in enumerate(data.sequences[:50], start=1):
        negatives = sample_negatives(items, data.n_items, user=user, seed=3)
        assert len(negatives) == 99 == len(set(negatives))
        assert not set(negatives) & set(items)
        assert all(1 <= i <= data.n_items for i in negatives)
        assert negatives == sample_negatives(items, data.n_items, user=user, seed=3)
    assert sample_negatives((1,), 500, user=1, seed=3) != sample_negatives((1,), 500, user=1, seed=4)


def test_negatives_refuse_when_too_few_untouched_items():
    with pytest.raises(ValueError, match="untouched"):
        sample_negatives(range(1, 95), 100, user=1, seed=0)


def test_a_run_trains_on_validation_items_except_its_validation_users_and_never_on_test_items():
    sequences = [(1, 2, 3, 4), (5, 6, 7), (8, 9, 10, 11, 12), (1, 5)]
    data = RecData(name="tiny", sequences=sequences, user_keys=("a", "b", "c", "d"), item_keys=tuple(str(i) for i in range(1, 13)))
    split = training_split(data, train_on_valid=True, validate_users=1, seed=0)
    (kept_out,) = [e.user for e in split.valid]
    for user, (items, trained) in enumerate(zip(sequences, split.train, strict=True), start=1):
        if len(items) < 3:
            assert trained == items
        else:
            assert trained == (items[:-2] if user == kept_out else items[:-1])
    assert [e.history + (e.target,) for e in split.test] == [s for s in sequences if len(s) >= 3]
    assert training_split(data).train == leave_one_out(sequences).train
