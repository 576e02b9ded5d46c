"""Bottleneck adapter configuration (the paper's adapters), validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

ENCODER_SITES = ("self_attn", "ff")
DECODER_SITES = ("self_attn", "cross_attn", "ff")


@dataclass(frozen=True)
class BottleneckConfig:
    d_model: int
    """width of the backbone's hidden states"""
    reduction_factor: int = 8
    """bottleneck width = d_model // reduction_factor (64 for t5-small at 8)"""
    activation: str = "gelu_new"
    """name in transformers.activations.ACT2FN (the reference code uses gelu_new)"""
    encoder_sites: tuple[str, ...] = ENCODER_SITES
    """encoder sub-layers followed by an adapter"""
    decoder_sites: tuple[str, ...] = DECODER_SITES
    """decoder sub-layers followed by an adapter; drop "cross_attn" for the paper's self-attn-only row"""

    def __post_init__(self) -> None:
        if self.d_model < 1:
            raise ValueError("BottleneckConfig.d_model must be >= 1")
        if not 1 <= self.reduction_factor <= self.d_model:
            raise ValueError("BottleneckConfig.reduction_factor must be in [1, d_model]")
        if not set(self.encoder_sites) <= set(ENCODER_SITES):
            raise ValueError(f"BottleneckConfig.encoder_sites must be within {ENCODER_SITES}")
        if not set(self.decoder_sites) <= set(DECODER_SITES):
            raise ValueError(f"BottleneckConfig.decoder_sites must be within {DECODER_SITES}")
        from transformers.activations import ACT2FN

        if self.activation not in ACT2FN:
            raise ValueError(f"BottleneckConfig.activation {self.activation!r} is not a known activation")

    @property
    def bottleneck_dim(self) -> int:
        return max(1, self.d_model // self.reduction_factor)
