"""Parameter-efficient adapters for the T5 backbone: "bottleneck" (the paper's) or "lora" (peft).

`attach_adapters(backbone, config)` inserts them; `is_adapter_param(name)` tells their parameters
apart (names relative to the VIP5 module: "adapters.*" for bottleneck, "*lora_*" for LoRA).
"""

from __future__ import annotations

from torch import nn

from ..config import VIP5Config
from .config import BottleneckConfig
from .lora import attach_lora, is_lora_key, pure_backbone_state_dict
from .model import BottleneckAdapters

__all__ = ["BottleneckConfig", "BottleneckAdapters", "attach_adapters", "is_adapter_param",
           "pure_backbone_state_dict"]


def attach_adapters(backbone: nn.Module, config: VIP5Config) -> nn.Module | None:
    """Bottleneck: returns the module holding the adapters (register it on the parent). LoRA: edits
    the backbone in place and returns None."""
    if config.adapter_kind == "bottleneck":
        bottleneck = BottleneckConfig(d_model=backbone.config.d_model, reduction_factor=config.reduction_factor)
        return BottleneckAdapters(bottleneck, backbone)
    if config.adapter_kind == "lora":
        attach_lora(backbone, config)
        return None
    raise ValueError(f"unknown adapter kind {config.adapter_kind!r}")


def is_adapter_param(name: str) -> bool:
    return name.startswith("adapters.") or is_lora_key(name)
