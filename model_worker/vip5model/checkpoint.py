"""Saving and loading VIP5: a full model directory, and adapter-only artifacts for hot swaps.

Model directory (`save_model_dir` / `load_model_dir`, also `VIP5Model.save_pretrained/from_pretrained`):
  vip5_config.json        {"format_version", "config": VIP5Config, "stages_run": [...],
                          "backbone_origin": {"name", "sha256"} of a pretrained backbone, else null}
  backbone/               stock T5 checkpoint (config.json + model.safetensors), loadable by transformers
  tokenizer/              the tokenizer (built or pretrained, with the image token)
  vip5_parts.safetensors  everything else: image mapping, "no image", whole-word and modality
                          embeddings, adapters (bottleneck modules or LoRA factors), item tokens
                          and their content features (item_ids="tokens")
  item_keys.json          item_ids="tokens": the item key of each row (row i = entry i-1)

Adapter artifact (`save_adapter` / `read_adapter` + `apply_adapter`):
  adapter.safetensors     exactly the parameters stage "adapt" trains (adapters, image mapping,
                          "no image" tokens, layer norms)
  adapter.json            {"format_version", "config", "stages_run", "backbone_sha256", "backbone_origin",
                           "tensors": {name: shape}}
`backbone_sha256` hashes every parameter stage "adapt" keeps frozen, so an artifact is only applied
to the backbone it was trained on; `backbone_origin` (backbone.py) names the pretrained checkpoint
it came from, so a refusal says which two backbones differ. Loading checks key sets and shapes
before copying anything.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .adapters import pure_backbone_state_dict
from .adapters.lora import is_lora_key
from .backbone import BackboneOrigin
from .config import VIP5Config

FORMAT_VERSION = 1
# Config fields that change what adapter weights mean; an artifact must agree on all of them.
ADAPTER_SHAPING_FIELDS = ("adapter_kind", "reduction_factor", "lora_rank", "lora_alpha", "lora_target_modules",
                          "image_feature_dim", "image_tokens", "whole_word_embedding")


def backbone_sha256(model) -> str:
    """Identity of the frozen part (names under stock T5 naming, shapes, bytes).

    In stage "adapt" nothing hashed here can train, so the digest is kept on the model until the
    next `set_stage` (adapter swaps then skip re-hashing the backbone).
    """
    cached = getattr(model, "_frozen_sha256", None)
    if cached is not None and model.stage == "adapt":
        return cached
    frozen = {n: p for n, p in model.named_parameters() if not model.trainable_in("adapt", n)}
    digest = hashlib.sha256()
    for name in sorted(frozen, key=lambda n: n.replace(".base_layer.", ".")):
        tensor = frozen[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(name.replace(".base_layer.", ".").encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes())
    if model.stage == "adapt":
        model._frozen_sha256 = digest.hexdigest()
    return digest.hexdigest()


# ---- adapter artifacts ------------------------------------------------------------------------


@dataclass(frozen=True)
class AdapterArtifact:
    manifest: dict
    tensors: dict[str, torch.Tensor]


def save_adapter(model, path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {n: t.contiguous().cpu() for n, t in model.adapt_state_dict().items()}
    manifest = {
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "stages_run": list(model.stages_run),
        "backbone_sha256": backbone_sha256(model),
        "backbone_origin": _origin_dict(model),
        "tensors": {n: list(t.shape) for n, t in tensors.items()},
    }
    save_file(tensors, str(path / "adapter.safetensors"))
    (path / "adapter.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return path


def read_adapter(path) -> AdapterArtifact:
    """Read and self-check an artifact (manifest agrees with the tensors); touches no model."""
    path = Path(path)
    manifest = json.loads((path / "adapter.json").read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: adapter format_version {manifest.get('format_version')} != {FORMAT_VERSION}")
    tensors = load_file(str(path / "adapter.safetensors"))
    _check_keys_and_shapes(manifest["tensors"], {n: list(t.shape) for n, t in tensors.items()}, f"{path} manifest")
    return AdapterArtifact(manifest, tensors)


def check_adapter(model, artifact: AdapterArtifact, *, check_backbone: bool = True) -> dict[str, torch.Tensor]:
    """Check an artifact against `model` (config, keys, shapes, backbone); returns the model's
    adapt-stage tensors the artifact's keys name. Raises ValueError naming what differs."""
    theirs = VIP5Config.from_dict(artifact.manifest["config"]).to_dict()
    ours = model.config.to_dict()
    differing = [f for f in ADAPTER_SHAPING_FIELDS if theirs[f] != ours[f]]
    if differing:
        raise ValueError(f"adapter config differs from the model's in {differing}")
    targets = model.adapt_state_dict()
    _check_keys_and_shapes({n: list(t.shape) for n, t in targets.items()},
                           {n: list(t.shape) for n, t in artifact.tensors.items()}, "adapter")
    if check_backbone:
        _check_backbone(model, artifact.manifest)
    return targets


def _check_backbone(model, manifest: dict) -> None:
    """Refuse an artifact made on another backbone: pretrained origins first (cheap, and the error
    names both checkpoints), then the digest of every frozen parameter."""
    theirs = BackboneOrigin.from_dict(manifest.get("backbone_origin"))
    ours = getattr(model, "backbone_origin", None)
    if theirs is not None and ours is not None and theirs.sha256 != ours.sha256:
        raise ValueError(f"adapter was trained on a different backbone (backbone_sha256 mismatch): the adapter's "
                         f"is {theirs.describe()}, this model's is {ours.describe()}")
    if manifest["backbone_sha256"] != backbone_sha256(model):
        where = f" (adapter from {theirs.describe()})" if theirs is not None else ""
        raise ValueError(f"adapter was trained on a different backbone (backbone_sha256 mismatch){where}")


def _origin_dict(model) -> dict | None:
    origin = getattr(model, "backbone_origin", None)
    return None if origin is None else origin.to_dict()


def apply_adapter(model, artifact: AdapterArtifact, *, check_backbone: bool = True) -> None:
    """Copy an artifact's weights into `model` after checking config, keys, shapes and backbone."""
    targets = check_adapter(model, artifact, check_backbone=check_backbone)
    with torch.no_grad():
        for name, target in targets.items():
            target.copy_(artifact.tensors[name].to(target.device, target.dtype))


def _check_keys_and_shapes(expected: dict, found: dict, what: str) -> None:
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{what}: missing keys {missing[:5]} ({len(missing)}), "
                         f"unexpected keys {unexpected[:5]} ({len(unexpected)})")
    wrong = [n for n in expected if list(expected[n]) != list(found[n])]
    if wrong:
        raise ValueError(f"{what}: shape mismatch for {wrong[:5]}: expected {[expected[n] for n in wrong[:5]]}, "
                         f"found {[found[n] for n in wrong[:5]]}")


# ---- full model directory ---------------------------------------------------------------------


def _is_part_key(name: str) -> bool:
    return not name.startswith("backbone.") or is_lora_key(name)


def save_model_dir(model, path) -> Path:
    from transformers import T5ForConditionalGeneration

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    meta = {"format_version": FORMAT_VERSION, "config": model.config.to_dict(), "stages_run": list(model.stages_run),
            "backbone_origin": _origin_dict(model)}
    (path / "vip5_config.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    backbone = model.backbone
    if model.config.adapter_kind == "lora":  # save a stock T5 copy, without peft's renamed layers
        backbone = T5ForConditionalGeneration(model.backbone.config)
        backbone.load_state_dict(pure_backbone_state_dict(model.backbone.state_dict()))
    backbone.save_pretrained(path / "backbone")
    model.tokenizer.save_pretrained(path / "tokenizer")
    parts = {n: t.detach().contiguous().cpu() for n, t in model.state_dict().items() if _is_part_key(n)}
    save_file(parts, str(path / "vip5_parts.safetensors"))
    if model.item_vocabulary is not None:
        model.item_vocabulary.save(path / "item_keys.json")
    return path


def load_model_dir(path, model_cls):
    """A model of class `model_cls` (called as model_cls(config, backbone, tokenizer)) from `path`.

    The class is passed in so that this module never imports model.py (which imports this one)."""
    from transformers import T5ForConditionalGeneration

    from .tokenizer import load_tokenizer

    path = Path(path)
    meta = json.loads((path / "vip5_config.json").read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {meta.get('format_version')} != {FORMAT_VERSION}")
    config = VIP5Config.from_dict(meta["config"])
    tokenizer = load_tokenizer(str(path / "tokenizer"), image_token=config.image_token)
    backbone = T5ForConditionalGeneration.from_pretrained(path / "backbone")
    model = model_cls(config, backbone, tokenizer)
    model.backbone_origin = BackboneOrigin.from_dict(meta.get("backbone_origin"))
    parts = load_file(str(path / "vip5_parts.safetensors"))
    expected = {n: list(t.shape) for n, t in model.state_dict().items() if _is_part_key(n)}
    _check_keys_and_shapes(expected, {n: list(t.shape) for n, t in parts.items()}, f"{path} vip5_parts")
    model.load_state_dict(parts, strict=False)
    if (path / "item_keys.json").exists():
        from .items import ItemVocabulary

        model.item_vocabulary = ItemVocabulary.load(path / "item_keys.json")
        if len(model.item_vocabulary) != config.n_items:
            raise ValueError(f"{path}: item_keys.json names {len(model.item_vocabulary)} items, config {config.n_items}")
    model.stages_run = list(meta.get("stages_run", []))
    model.stage = model.stages_run[-1] if model.stages_run else None
    if model.stage:
        model.set_stage(model.stage)
    return model
