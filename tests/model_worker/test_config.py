import pytest

from model_worker.vip5model.config import PRESETS, VIP5Config, preset_t5_config


@pytest.mark.parametrize(("field", "value"), [
    ("image_tokens", 0), ("adapter_kind", "prefix"), ("reduction_factor", 0), ("lora_rank", 0),
    ("image_feature_dim", -1), ("whole_word_vocab", 1), ("dropout_rate", 1.0), ("vocab_size", 3),
])
def test_invalid_field_is_named_in_the_error(field, value):
    with pytest.raises(ValueError, match=f"VIP5Config.{field}"):
        VIP5Config(**{field: value})


def test_config_round_trips_through_a_dict():
    config = VIP5Config(backbone="small", adapter_kind="lora", lora_target_modules=["q", "k", "v"])
    assert VIP5Config.from_dict(config.to_dict()) == config
    assert config.lora_target_modules == ("q", "k", "v")


def test_unknown_fields_are_rejected():
    with pytest.raises(ValueError, match="unknown fields"):
        VIP5Config.from_dict({"backbone": "tiny", "d_model": 3})


def test_t5_small_preset_has_the_published_architecture():
    t5 = preset_t5_config(VIP5Config(backbone="t5-small"), vocab_size=300, pad_token_id=0, eos_token_id=1)
    assert (t5.d_model, t5.d_ff, t5.num_layers, t5.num_decoder_layers, t5.num_heads, t5.vocab_size) == (
        512, 2048, 6, 6, 8, 32128)
    assert {"tiny", "small", "t5-small"} <= set(PRESETS)


def test_preset_vocab_must_hold_the_tokenizer():
    with pytest.raises(ValueError, match="vocab_size"):
        preset_t5_config(VIP5Config(backbone="tiny", vocab_size=100), vocab_size=300, pad_token_id=0, eos_token_id=1)
