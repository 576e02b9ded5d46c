"""Bottleneck adapters placed in a T5 backbone by forward hooks.

Where: after self-attention and feed-forward in every encoder block; after self-attention,
cross-attention and feed-forward in every decoder block (6x2 + 6x3 = 30 adapters for t5-small).
Each adapter acts on the sub-layer's output before T5's dropout and residual add, as in the
reference code (T5 is pre-LN, so this is "after the module, before the next LayerNorm").

Why hooks instead of re-implementing T5's layers: the backbone stays a stock
`T5ForConditionalGeneration` whose module tree and state-dict keys are exactly T5's, so pretrained
checkpoints load unchanged and the adapters' weights live in their own module (`BottleneckAdapters`)
with their own keys, which is what adapter-only save/load needs.
"""

from __future__ import annotations

from torch import nn

from .config import BottleneckConfig
from .layer import BottleneckAdapter


def _sublayer(block: nn.Module, site: str) -> nn.Module:
    """The T5 module whose output the adapter for `site` rewrites."""
    if site == "self_attn":
        return block.layer[0].SelfAttention
    if site == "cross_attn":
        return block.layer[1].EncDecAttention
    if site == "ff":
        return block.layer[-1].DenseReluDense
    raise ValueError(f"unknown adapter site {site!r}")


def _hook(adapter: BottleneckAdapter):
    def rewrite(module, inputs, output):
        if isinstance(output, tuple):  # attention returns (hidden, position_bias, weights)
            return (adapter(output[0]), *output[1:])
        return adapter(output)

    return rewrite


class BottleneckAdapters(nn.Module):
    """All adapters of one backbone, keyed "<stack>_<block>_<site>", e.g. "decoder_3_cross_attn"."""

    def __init__(self, config: BottleneckConfig, backbone: nn.Module):
        super().__init__()
        self.config = config
        self.adapters = nn.ModuleDict()
        self._handles = []
        stacks = (("encoder", backbone.encoder, config.encoder_sites),
                  ("decoder", backbone.decoder, config.decoder_sites))
        for stack_name, stack, sites in stacks:
            for index, block in enumerate(stack.block):
                for site in sites:
                    adapter = BottleneckAdapter(config.d_model, config.bottleneck_dim, config.activation)
                    self.adapters[f"{stack_name}_{index}_{site}"] = adapter
                    handle = _sublayer(block, site).register_forward_hook(_hook(adapter))
                    self._handles.append(handle)

    def detach(self) -> None:
        """Remove the hooks; the backbone computes as if no adapter were attached."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __len__(self) -> int:
        return len(self.adapters)
