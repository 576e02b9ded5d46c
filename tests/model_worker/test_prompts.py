import numpy as np
import pytest

from model_worker.vip5model.config import VIP5Config
from model_worker.vip5model.encoding import PromptEncoder
from model_worker.vip5model.prompts import (
    FAMILIES,
    Prompt,
    direct_prompt,
    direct_yes_no_prompt,
    explanation_prompt,
    sequential_prompt,
    templates,
)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_has_seen_and_held_out_templates(family):
    assert len(templates(family, held_out=False)) >= 2
    assert len(templates(family, held_out=True)) >= 1


def test_prompts_write_ids_as_text_with_one_image_marker_per_item():
    prompt = sequential_prompt("A-1", 7, [11, 12], 13)
    assert "user_7" in prompt.source and "11 <image> , 12 <image>" in prompt.source
    assert prompt.image_item_ids == ("11", "12") and prompt.target == "13"
    direct = direct_prompt("B-7", 7, [21, 22], 22, history=[11])
    assert direct.image_item_ids == ("11", "21", "22")
    assert direct_yes_no_prompt("B-1", 7, 21, True).target == "yes"
    assert explanation_prompt("C-3", 7, 21, "nice", star_rating=5).image_item_ids == ("21",)


def test_templates_needing_missing_fields_can_be_filtered_out():
    ids = {t.template_id for t in templates("explanation", usable_with={"user_id", "item"})}
    assert "C-3" not in ids and "C-1" in ids
    with pytest.raises(ValueError, match="star_rating"):
        explanation_prompt("C-3", 7, 21, "nice")


def test_encoder_marks_placeholders_whole_words_and_image_slots(tokenizer, features):
    encoder = PromptEncoder(tokenizer, VIP5Config(image_feature_dim=8, image_tokens=2))
    prompts = [sequential_prompt("A-1", 7, [11, 12], 13), explanation_prompt("C-1", 8, 5000, "great color")]
    batch = encoder.encode(prompts, features)
    assert batch.input_ids.shape == batch.whole_word_ids.shape == batch.modality_ids.shape
    assert batch.image_features.shape == (2, 2, 8)
    assert batch.modality_ids.sum(dim=1).tolist() == [4, 2]  # k = 2 per item
    assert batch.image_mask.tolist() == [[True, True], [False, False]]  # 5000 has no feature; slot 2 is padding
    ids = batch.input_ids[0].tolist()
    tokens = tokenizer.convert_ids_to_tokens(ids)
    user = [i for i, t in enumerate(tokens) if t in ("▁user_", "7")][:2]
    assert batch.whole_word_ids[0, user[0]] == batch.whole_word_ids[0, user[1]]  # "user_7" is one word
    image_positions = (batch.modality_ids[0] == 1).nonzero().flatten().tolist()
    image_words = batch.whole_word_ids[0, image_positions].tolist()
    assert len(set(image_words)) == len(image_words)  # each placeholder is its own word
    assert batch.whole_word_ids[0, batch.attention_mask[0].sum() - 1] == 0  # </s>
    assert (batch.labels[1] != -100).sum() == len(tokenizer("great color").input_ids)


def test_marker_count_must_match_image_items(tokenizer):
    encoder = PromptEncoder(tokenizer, VIP5Config(image_feature_dim=8))
    with pytest.raises(ValueError, match="image markers"):
        encoder.encode([Prompt("direct", "X", "item_1 <image>", ("1", "2"), "1")])


def test_feature_size_is_checked(tokenizer):
    encoder = PromptEncoder(tokenizer, VIP5Config(image_feature_dim=8))
    with pytest.raises(ValueError, match="image_feature_dim"):
        encoder.encode([sequential_prompt("A-1", 1, [2], 3)], {"2": np.zeros(5)})
