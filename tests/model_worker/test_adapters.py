"""Contract every adapter kind meets: stages, gradients, identity at attach, save/load."""

import pytest
import torch

from model_worker.vip5model.checkpoint import read_adapter
from model_worker.vip5model.prompts import direct_prompt, sequential_prompt
from model_worker.vip5model.scoring import score_candidates
from model_worker.vip5model.trie import ItemTrie

from .conftest import ADAPTER_KINDS

CANDIDATES = [str(i) for i in range(100, 130)]


def _train_batch(model, features):
    prompts = [sequential_prompt("A-1", 7, [11, 12, 13], 14), direct_prompt("B-5", 8, [21, 22, 23], 22)]
    return model.encoder.encode(prompts, features)


def _scores(model, features):
    batch = model.encoder.encode([direct_prompt("B-7", 3, CANDIDATES, history=[5, 6])], features, with_labels=False)
    return score_candidates(model, batch, [ItemTrie.from_items(model.encoder, CANDIDATES)])[0]


@pytest.mark.parametrize("kind", ADAPTER_KINDS)
def test_adapt_stage_updates_only_adapters_mapping_and_layer_norms(kind, make_model, features):
    model = make_model(kind)
    model.set_stage("adapt")
    model.train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    model(_train_batch(model, features))["loss"].backward()
    for name, param in model.named_parameters():
        group = model.param_group(name)
        assert param.requires_grad == (group in ("adapters", "image_mapping", "layer_norms")), name
        if not param.requires_grad:
            assert param.grad is None, name
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2).step()
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name  # bit-identical
    assert any(model.param_group(n) == "adapters" and p.grad is not None and p.grad.abs().sum() > 0
               for n, p in model.named_parameters())


@pytest.mark.parametrize("kind", ADAPTER_KINDS)
def test_pretrain_stage_trains_the_backbone_and_leaves_adapters_alone(kind, make_model):
    model = make_model(kind)
    model.set_stage("pretrain")
    groups = model.trainable_parameters()["groups"]
    assert groups["adapters"]["trainable"] == 0
    assert groups["backbone"]["trainable"] == groups["backbone"]["params"] > 0
    model.set_stage("adapt")
    assert model.stages_run == ["pretrain", "adapt"]


@pytest.mark.parametrize("kind", ADAPTER_KINDS)
def test_fresh_adapters_do_not_change_the_backbone_function(kind, make_model, tokenizer, features):
    plain = make_model(kind, perturb=False)
    other = make_model("lora" if kind == "bottleneck" else "bottleneck", perturb=False)
    assert torch.allclose(_scores(plain, features), _scores(other, features), atol=1e-5)


@pytest.mark.parametrize("kind", ADAPTER_KINDS)
def test_adapter_round_trip_gives_identical_scores(kind, make_model, features, tmp_path):
    trained = make_model(kind, seed=0)
    trained.save_adapter(tmp_path / "adapter")
    fresh = make_model(kind, seed=0, perturb=False)  # same backbone, identity adapters
    assert not torch.equal(_scores(fresh, features), _scores(trained, features))
    fresh.load_adapter(tmp_path / "adapter")
    assert torch.equal(_scores(fresh, features), _scores(trained, features))
    manifest = read_adapter(tmp_path / "adapter").manifest
    assert manifest["config"]["adapter_kind"] == kind and len(manifest["backbone_sha256"]) == 64


@pytest.mark.parametrize("kind", ADAPTER_KINDS)
def test_adapter_for_another_backbone_is_refused(kind, make_model, tmp_path):
    make_model(kind, seed=0).save_adapter(tmp_path / "adapter")
    with pytest.raises(ValueError, match="backbone_sha256"):
        make_model(kind, seed=5).load_adapter(tmp_path / "adapter")


def test_adapter_of_another_kind_is_refused(make_model, tmp_path):
    make_model("lora").save_adapter(tmp_path / "adapter")
    with pytest.raises(ValueError, match="adapter_kind"):
        make_model("bottleneck").load_adapter(tmp_path / "adapter")


def test_bottleneck_adapters_sit_after_every_attention_and_feed_forward(make_model):
    model = make_model("bottleneck")
    assert len(model.adapters) == 2 * 2 + 2 * 3  # tiny: 2 encoder blocks x 2, 2 decoder blocks x 3
    assert "decoder_1_cross_attn" in model.adapters.adapters
