"""LoRA through peft: low-rank updates W + (alpha / r) * B A on the named T5 linear layers.

peft replaces each target `nn.Linear` in place by a LoRA layer that keeps the original weight as
`<name>.base_layer.weight` and adds `<name>.lora_A.default.weight` / `lora_B` (B starts at zero,
so the backbone's outputs are unchanged until training). `pure_backbone_state_dict` undoes the
renaming so the backbone can be saved as a stock T5 checkpoint.
"""

from __future__ import annotations

from torch import nn

from ..config import VIP5Config

ADAPTER_NAME = "default"


def attach_lora(backbone: nn.Module, config: VIP5Config) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    lora_config = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
        bias="none",
    )
    inject_adapter_in_model(lora_config, backbone, adapter_name=ADAPTER_NAME)


def is_lora_key(name: str) -> bool:
    return "lora_" in name


def pure_backbone_state_dict(state_dict: dict) -> dict:
    """Backbone weights under stock T5 names (LoRA factors dropped, base_layer renamed back)."""
    return {k.replace(".base_layer.", "."): v for k, v in state_dict.items() if not is_lora_key(k)}
