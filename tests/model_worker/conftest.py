"""Tiny VIP5 models for fast CPU tests (d_model 64, 2+2 layers, 8-d image features)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_worker.vip5model.config import VIP5Config
from model_worker.vip5model.model import VIP5Model
from model_worker.vip5model.tokenizer import build_template_tokenizer

FEATURE_DIM = 8
ADAPTER_KINDS = ("bottleneck", "lora")


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny matrices gain nothing from threads, and a shared CPU makes thread hand-offs slow."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tokenizer():
    return build_template_tokenizer(["this lipstick is great and i love the color"], vocab_size=400)


def perturb_adapters(model: VIP5Model, *, seed: int = 1) -> None:
    """Give adapters non-identity weights so tests exercise them (fresh adapters are the identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if model.param_group(name) == "adapters":
                param.add_(0.2 * torch.randn(param.shape, generator=generator))


@pytest.fixture
def make_model(tokenizer):
    def make(adapter_kind: str = "bottleneck", *, seed: int = 0, perturb: bool = True, **config) -> VIP5Model:
        cfg = VIP5Config(backbone="tiny", image_feature_dim=FEATURE_DIM, adapter_kind=adapter_kind,
                         dropout_rate=0.0, **config)
        model = VIP5Model.build(cfg, tokenizer, seed=seed)
        if perturb:
            perturb_adapters(model, seed=seed + 1)
        return model.eval()

    return make


@pytest.fixture
def features():
    rng = np.random.default_rng(0)
    return {str(i): rng.standard_normal(FEATURE_DIM).astype(np.float32) for i in range(1, 200)}
