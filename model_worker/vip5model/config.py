"""VIP5 configuration: one frozen dataclass, validated on construction, plus backbone presets.

In: field values (or a dict read back from `vip5_config.json`). Out: a `VIP5Config` and, for preset
backbones, the `transformers.T5Config` that builds a randomly initialised T5.

`backbone` is either a preset name (`PRESETS`: built from a T5Config with random weights, for offline
use) or a hub name / local path loaded with `from_pretrained` when the weights exist on the machine.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

ADAPTER_KINDS = ("bottleneck", "lora")
ITEM_ID_KINDS = ("digits", "tokens")
STAGES = ("pretrain", "adapt")

# Architectures only; no weights. "t5-small" and "t5-base" match the published checkpoints' shapes
# (relu feed-forward, vocab 32128) so parameter counts compare with the paper.
PRESETS: dict[str, dict] = {
    # "mini": the default recipe for item tokens on a CPU (a shallow encoder reads the task prompt,
    # the decoder reads the history; about 2.3M parameters with 12k items)
    "mini": dict(d_model=128, d_ff=512, num_layers=1, num_decoder_layers=2, num_heads=4, d_kv=32),
    "tiny": dict(d_model=64, d_ff=256, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=16),
    "small": dict(d_model=256, d_ff=1024, num_layers=4, num_decoder_layers=4, num_heads=4, d_kv=64),
    "t5-small": dict(
        d_model=512, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8, d_kv=64, vocab_size=32128
    ),
    "t5-base": dict(
        d_model=768, d_ff=3072, num_layers=12, num_decoder_layers=12, num_heads=12, d_kv=64, vocab_size=32128
    ),
}


@dataclass(frozen=True)
class VIP5Config:
    """Everything that shapes a VIP5 model. Field docs say what each one controls."""

    backbone: str = "tiny"
    """preset name (see PRESETS) or a hub name / local directory of a T5 checkpoint; a preset name
    wins, so the pretrained t5-small is "google-t5/t5-small" ("t5-small" is its shape, random)"""
    image_feature_dim: int = 1280
    """size of one item's image vector: 1280 for EfficientNet-Lite0, 512 for CLIP ViT-B/32"""
    image_tokens: int = 2
    """k: placeholder tokens per item image (the mapping network emits k x d_model)"""
    adapter_kind: str = "bottleneck"
    """"bottleneck" (the paper's adapters) or "lora" (peft LoRA)"""
    reduction_factor: int = 8
    """bottleneck width = d_model // reduction_factor"""
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = ("q", "v")
    """names of the T5 linear layers that receive LoRA (attention q/k/v/o, feed-forward wi/wo)"""
    whole_word_embedding: bool = True
    """add an embedding of the whole-word index (marks the sub-tokens of one ID)"""
    whole_word_vocab: int = 1024
    """number of whole-word indices; later words share the last index"""
    max_source_length: int = 1024
    """encoder tokens per prompt (after image placeholders are expanded); longer prompts are cut"""
    max_target_length: int = 64
    vocab_size: int | None = None
    """backbone vocabulary of a preset without a fixed one; None = the tokenizer's size"""
    dropout_rate: float = 0.1
    """backbone dropout for preset backbones (pretrained backbones keep their own)"""
    image_token: str = "<image>"
    """special token used as the image placeholder"""
    item_ids: str = "digits"
    """how items are named: "digits" (the paper's digit pieces, one word per item, scored through
    a trie) or "tokens" (one learned token per item plus its content feature through the image
    mapping; the decoder reads the history and scores every item in one pass; see items.py)"""
    n_items: int = 0
    """item tokens ("tokens" only): size of the item vocabulary (rows 1..n_items)"""
    item_id_dropout: float = 0.0
    """item tokens: share of id embeddings dropped per training step (0.1 slowed learning 2x here)"""
    content_loss_weight: float = 0.0
    """item tokens: weight of an extra training loss in which items are named by their content part
    alone, to sharpen the content tokens of items that arrive after training. Off by default: on
    Toys, 0.25 held validation HR@10 at 0.087 where 0 reached 0.1055 in the same time; the content
    part still trains through the id + content sum"""
    new_item_neighbours: int = 2
    """item tokens: an item without a trained id (one that arrived after training) takes as its id part
    the similarity-weighted mean id of its `new_item_neighbours` nearest trained items by content
    (cosine); 0 leaves it the content part alone. On Toys items held out of training, 2 neighbours
    put 6% of their next-item targets in the top 10, where the content part alone put none"""
    new_item_temperature: float = 0.05
    """item tokens: softmax temperature over the neighbours' cosine similarities"""
    sequence_prompt: str = "sequential recommendation : which item will the user interact with next ?"
    """item tokens: the task prompt the encoder reads for next-item recommendation"""

    def __post_init__(self) -> None:
        # tuple() so a list read back from JSON still gives a hashable, frozen config
        object.__setattr__(self, "lora_target_modules", tuple(self.lora_target_modules))
        _check(bool(self.backbone), "backbone", "must be a preset name or a path/hub name")
        _check(self.image_feature_dim > 0, "image_feature_dim", "must be > 0")
        _check(self.image_tokens >= 1, "image_tokens", "must be >= 1")
        _check(self.adapter_kind in ADAPTER_KINDS, "adapter_kind", f"must be one of {ADAPTER_KINDS}")
        _check(self.reduction_factor >= 1, "reduction_factor", "must be >= 1")
        _check(self.lora_rank >= 1, "lora_rank", "must be >= 1")
        _check(self.lora_alpha > 0, "lora_alpha", "must be > 0")
        _check(0.0 <= self.lora_dropout < 1.0, "lora_dropout", "must be in [0, 1)")
        _check(len(self.lora_target_modules) > 0, "lora_target_modules", "must name at least one module")
        _check(self.whole_word_vocab >= 2, "whole_word_vocab", "must be >= 2")
        _check(self.max_source_length >= 8, "max_source_length", "must be >= 8")
        _check(self.max_target_length >= 2, "max_target_length", "must be >= 2")
        _check(self.vocab_size is None or self.vocab_size >= 8, "vocab_size", "must be None or >= 8")
        _check(0.0 <= self.dropout_rate < 1.0, "dropout_rate", "must be in [0, 1)")
        _check(bool(self.image_token.strip()), "image_token", "must be a non-empty token string")
        _check(self.item_ids in ITEM_ID_KINDS, "item_ids", f"must be one of {ITEM_ID_KINDS}")
        _check(self.n_items >= 0 and (self.item_ids != "tokens" or self.n_items >= 1), "n_items",
               "must be >= 1 with item_ids='tokens'")
        _check(0.0 <= self.item_id_dropout < 1.0, "item_id_dropout", "must be in [0, 1)")
        _check(self.content_loss_weight >= 0.0, "content_loss_weight", "must be >= 0")
        _check(self.new_item_neighbours >= 0, "new_item_neighbours", "must be >= 0")
        _check(self.new_item_temperature > 0.0, "new_item_temperature", "must be > 0")

    @property
    def is_preset(self) -> bool:
        return self.backbone in PRESETS

    def replace(self, **changes) -> VIP5Config:
        return VIP5Config(**{**self.to_dict(), **changes})

    def to_dict(self) -> dict:
        data = asdict(self)
        data["lora_target_modules"] = list(self.lora_target_modules)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> VIP5Config:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"VIP5Config: unknown fields {sorted(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _check(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ValueError(f"VIP5Config.{field} {message}")


def preset_t5_config(config: VIP5Config, *, vocab_size: int, pad_token_id: int, eos_token_id: int):
    """The T5Config of a preset backbone. Vocabulary: the preset's if it fixes one, else
    config.vocab_size, else `vocab_size` (the tokenizer's size)."""
    from transformers import T5Config

    if not config.is_preset:
        raise ValueError(f"VIP5Config.backbone {config.backbone!r} is not a preset ({sorted(PRESETS)})")
    shape = dict(PRESETS[config.backbone])
    shape.setdefault("vocab_size", config.vocab_size or vocab_size)
    if shape["vocab_size"] < vocab_size:
        raise ValueError(f"VIP5Config.vocab_size: backbone vocab {shape['vocab_size']} < tokenizer size {vocab_size}")
    return T5Config(
        **shape,
        dropout_rate=config.dropout_rate,
        feed_forward_proj="relu",
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        decoder_start_token_id=pad_token_id,
    )
