"""Pretrained T5 backbones: loaded by hub name or local folder, and identified by a digest of their weights.

In:  a hub name ("t5-small") or a local folder holding a T5 checkpoint (config.json + weights) and
     its tokenizer (T5's SentencePiece vocabulary: tokenizer.json, or spiece.model converted by
     transformers).
Out: the `T5ForConditionalGeneration`, its tokenizer with the image placeholder token added, and a
     `BackboneOrigin`: the name it was loaded from and the sha256 of its weights as loaded (before
     the model resizes the embeddings for the image token or attaches adapters).

The origin travels with everything made from the backbone (vip5_config.json of a model directory,
adapter.json of an adapter artifact, train_config.json of a run), so an adapter artifact names the
backbone it was trained on and is refused by a model built from another one.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass(frozen=True)
class BackboneOrigin:
    """name: hub name, or the absolute path of the local folder; sha256: `weights_sha256` of the
    backbone as loaded from it."""

    name: str
    sha256: str

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("BackboneOrigin.name must be a hub name or a path")
        if len(self.sha256) != 64:
            raise ValueError(f"BackboneOrigin.sha256 must be a sha256 hex digest, got {self.sha256!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> BackboneOrigin | None:
        return None if data is None else cls(name=data["name"], sha256=data["sha256"])

    def describe(self) -> str:
        return f"{self.name} (sha256 {self.sha256[:12]})"


def weights_sha256(module: nn.Module) -> str:
    """sha256 over every parameter (sorted names, shapes, float32 bytes); tied weights count once."""
    digest = hashlib.sha256()
    params = dict(module.named_parameters())
    for name in sorted(params):
        tensor = params[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def origin_name(name_or_path: str) -> str:
    """A local folder is recorded by its absolute path, a hub name as given."""
    path = Path(name_or_path)
    return str(path.resolve()) if path.is_dir() else name_or_path


def load_pretrained_backbone(name_or_path: str, *, image_token: str = "<image>", tokenizer=None):
    """(backbone, tokenizer, origin) of a pretrained T5. `tokenizer`: use this one instead of the
    checkpoint's. A hub name needs the weights in the local cache or access to the hub."""
    from transformers import T5ForConditionalGeneration

    from .tokenizer import load_tokenizer

    try:
        backbone = T5ForConditionalGeneration.from_pretrained(name_or_path)
    except OSError as error:
        raise OSError(f"backbone {name_or_path!r}: no T5 checkpoint in that folder or in the Hugging Face cache, "
                      f"and the hub could not provide one (needs the weights on this machine or hub access): "
                      f"{error}") from error
    if tokenizer is None:
        tokenizer = load_tokenizer(name_or_path, image_token=image_token)
    return backbone, tokenizer, BackboneOrigin(origin_name(name_or_path), weights_sha256(backbone))
