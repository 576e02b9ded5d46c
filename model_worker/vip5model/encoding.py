"""Prompt encoder: `Prompt`s + an image-feature lookup -> the tensors VIP5 consumes.

Shapes (letter legend): B prompts, T source tokens, M image slots (items) per prompt, F image
feature size, L target tokens, k image tokens per item.

  input_ids      (B, T) long   every image marker expanded to k placeholder tokens; ends with </s>
  attention_mask (B, T) long   1 on real tokens
  whole_word_ids (B, T) long   1 + index of the whitespace word a sub-token belongs to, so the
                               pieces of "item_1234" share one index (P5/VIP5); each placeholder is
                               its own word; </s> and padding are 0
  modality_ids   (B, T) long   0 text, 1 image placeholder
  image_features (B, M, F)     features of `Prompt.image_item_ids` in order, zeros where missing
  image_mask     (B, M) bool   True where a feature was found (missing -> learned "no image" tokens)
  labels         (B, L) long   target token ids ending with </s>, -100 at padding

Truncation cuts the source at `max_source_length` tokens (keeping </s>); placeholders that fall
off take their items' image tokens with them, in order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from .config import VIP5Config
from .prompts import IMAGE_MARKER, Prompt
from .tokenizer import image_token_id

ImageLookup = Mapping  # item id (str) -> np.ndarray | torch.Tensor of shape (F,); `.get` is all we use


@dataclass
class EncodedBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    whole_word_ids: torch.Tensor
    modality_ids: torch.Tensor
    image_features: torch.Tensor
    image_mask: torch.Tensor
    labels: torch.Tensor | None = None

    def to(self, device) -> EncodedBatch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return EncodedBatch(**{k: (v.to(device) if v is not None else None) for k, v in moved.items()})

    def __len__(self) -> int:
        return self.input_ids.shape[0]


class PromptEncoder:
    """Turns prompts into a `EncodedBatch`; use `encode` directly as a DataLoader `collate_fn` via partial."""

    def __init__(self, tokenizer, config: VIP5Config):
        self.tokenizer = tokenizer
        self.config = config
        self.image_id = image_token_id(tokenizer, config.image_token)

    def encode(self, prompts: Sequence[Prompt], image_lookup: ImageLookup | None = None,
               *, with_labels: bool = True) -> EncodedBatch:
        if not prompts:
            raise ValueError("encode needs at least one prompt")
        source = self._encode_sources(prompts)
        features, mask = self._image_features(prompts, image_lookup)
        labels = self.encode_targets([p.target for p in prompts]) if with_labels else None
        return EncodedBatch(**source, image_features=features, image_mask=mask, labels=labels)

    def _encode_sources(self, prompts: Sequence[Prompt]) -> dict[str, torch.Tensor]:
        k, placeholder = self.config.image_tokens, self.config.image_token
        words = [_expand_markers(p, k, placeholder) for p in prompts]
        enc = self.tokenizer(
            words, is_split_into_words=True, truncation=True, max_length=self.config.max_source_length,
            padding=True, return_tensors="pt",
        )
        input_ids = enc["input_ids"]  # (B, T)
        last_word = self.config.whole_word_vocab - 1
        whole_word = torch.tensor(
            [[0 if w is None else min(w + 1, last_word) for w in enc.word_ids(i)] for i in range(len(words))],
            dtype=torch.long,
        )  # (B, T)
        return dict(
            input_ids=input_ids,
            attention_mask=enc["attention_mask"],
            whole_word_ids=whole_word,
            modality_ids=(input_ids == self.image_id).long(),
        )

    def _image_features(self, prompts, image_lookup) -> tuple[torch.Tensor, torch.Tensor]:
        dim = self.config.image_feature_dim
        slots = max(len(p.image_item_ids) for p in prompts)
        features = np.zeros((len(prompts), slots, dim), dtype=np.float32)  # (B, M, F)
        mask = np.zeros((len(prompts), slots), dtype=bool)  # (B, M)
        for b, prompt in enumerate(prompts):
            for m, item in enumerate(prompt.image_item_ids):
                vector = image_lookup.get(item) if image_lookup is not None else None
                if vector is None:
                    continue
                vector = np.asarray(vector, dtype=np.float32).reshape(-1)
                if vector.shape[0] != dim:
                    raise ValueError(f"image feature of item {item!r} has size {vector.shape[0]}, "
                                     f"config.image_feature_dim is {dim}")
                features[b, m], mask[b, m] = vector, True
        return torch.from_numpy(features), torch.from_numpy(mask)

    def encode_targets(self, targets: Sequence[str]) -> torch.Tensor:
        """Target texts -> (B, L) labels, -100 at padding. Also the token sequences candidates are scored by."""
        enc = self.tokenizer(
            list(targets), truncation=True, max_length=self.config.max_target_length,
            padding=True, return_tensors="pt",
        )
        return enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)

    def target_token_ids(self, targets: Sequence[str]) -> list[list[int]]:
        """Unpadded target token ids (each ending with </s>), e.g. for building an item trie."""
        enc = self.tokenizer(list(targets), truncation=True, max_length=self.config.max_target_length)
        return [list(ids) for ids in enc["input_ids"]]


def _expand_markers(prompt: Prompt, k: int, placeholder: str) -> list[str]:
    words: list[str] = []
    markers = 0
    for word in prompt.source.split():
        if word == IMAGE_MARKER:
            words.extend([placeholder] * k)
            markers += 1
        else:
            words.append(word)
    if markers != len(prompt.image_item_ids):
        raise ValueError(f"prompt {prompt.template_id} has {markers} image markers but "
                         f"{len(prompt.image_item_ids)} image_item_ids")
    return words
