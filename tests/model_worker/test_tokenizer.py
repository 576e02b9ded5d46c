from model_worker.vip5model.prompts import template_corpus
from model_worker.vip5model.tokenizer import build_tokenizer, image_token_id, load_tokenizer


def test_building_twice_from_the_same_corpus_gives_the_same_tokenizer():
    corpus = [*template_corpus(), "the color is lovely and it lasts all day"]
    first, second = build_tokenizer(corpus, vocab_size=300), build_tokenizer(corpus, vocab_size=300)
    assert first.get_vocab() == second.get_vocab()
    text = "user_12 bought item_3456 and loved it"
    assert first(text).input_ids == second(text).input_ids


def test_item_ids_split_into_one_token_per_digit(tokenizer):
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("item_1234").input_ids)
    assert tokens[-5:] == ["1", "2", "3", "4", "</s>"]
    assert tokenizer.decode(tokenizer("item_1234 is 99").input_ids, skip_special_tokens=True) == "item_1234 is 99"


def test_special_tokens_follow_t5_conventions(tokenizer):
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1)
    assert image_token_id(tokenizer) == 3
    assert tokenizer("yes").input_ids[-1] == tokenizer.eos_token_id


def test_saved_tokenizer_loads_back_identically(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    text = "Here is the purchase history list of user_7 : 12 <image> <image>"
    assert loaded(text).input_ids == tokenizer(text).input_ids
    assert len(loaded) == len(tokenizer)
