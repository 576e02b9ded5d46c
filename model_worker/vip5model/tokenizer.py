"""Tokenizers for VIP5: built reproducibly from a text corpus, or a pretrained one loaded by name/path.

In: an iterable of strings (templates rendered with sample values, item/user ids, explanation texts)
or a hub name / local directory. Out: a `transformers.PreTrainedTokenizerFast` with `<pad>` (id 0,
also the decoder start), `</s>` (appended to every encoded text), `<unk>` and the image placeholder
token as an additional special token.

The built tokenizer is a BPE model over Metaspace words with every digit split into its own piece,
so "item_1234" becomes "▁item_" "1" "2" "3" "4": IDs are read as sequences of sub-tokens, as
P5/VIP5's SentencePiece vocabulary does, and decoding gives the original text back.
"""

from __future__ import annotations

import string
from collections.abc import Iterable

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
# Always in the vocabulary, so any ID and ordinary English text encode without <unk>.
BASE_ALPHABET = list(string.ascii_letters + string.digits + string.punctuation + "▁")


def build_tokenizer(corpus: Iterable[str], *, vocab_size: int = 4000, image_token: str = "<image>"):
    """Train a BPE tokenizer on `corpus`. Same corpus (in the same order) -> same vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = [PAD, EOS, UNK, image_token]  # ids 0, 1, 2, 3
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(prepend_scheme="always"), pre_tokenizers.Digits(individual_digits=True)]
    )
    tokenizer.decoder = decoders.Metaspace(prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=BASE_ALPHABET,
        show_progress=False,
    )
    # the placeholder is a special token; keep its spelling out of the learned merges
    texts = [text.replace(image_token, " ") for text in corpus]
    tokenizer.train_from_iterator(texts, trainer=trainer)
    eos_id = tokenizer.token_to_id(EOS)
    tokenizer.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, eos_id)])
    return _wrap(tokenizer, image_token)


def build_template_tokenizer(extra_texts: Iterable[str] = (), *, vocab_size: int = 2000,
                             image_token: str = "<image>"):
    """A tokenizer from the prompt templates (+ `extra_texts`, e.g. explanations): enough for IDs,
    templates and the demo; real training data should add its own texts."""
    from .prompts import template_corpus

    return build_tokenizer([*template_corpus(), *extra_texts], vocab_size=vocab_size, image_token=image_token)


def _wrap(tokenizer, image_token: str):
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        additional_special_tokens=[image_token],
        model_max_length=100_000,
    )
    return wrapped


def load_tokenizer(name_or_path: str, *, image_token: str = "<image>"):
    """Load a saved or pretrained fast tokenizer and make sure the image placeholder token exists.

    Adding the token may grow the vocabulary; the model resizes its embeddings to match.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, use_fast=True)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"tokenizer at {name_or_path!r} is not a fast tokenizer (offsets/word ids needed)")
    if tokenizer.convert_tokens_to_ids(image_token) in (None, tokenizer.unk_token_id):
        tokenizer.add_special_tokens({"additional_special_tokens": [image_token]})
    if tokenizer.pad_token is None or tokenizer.eos_token is None:
        raise ValueError(f"tokenizer at {name_or_path!r} needs pad and eos tokens")
    return tokenizer


def image_token_id(tokenizer, image_token: str = "<image>") -> int:
    token_id = tokenizer.convert_tokens_to_ids(image_token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f"tokenizer has no image placeholder token {image_token!r}")
    return int(token_id)
