"""Named adapter sets in one model: staging checks, activation is a pointer change, no model copy."""

import pytest
import torch

from model_worker.vip5model.checkpoint import AdapterArtifact, backbone_sha256
from model_worker.vip5model.slots import AdapterSlots


def artifact_of(model) -> AdapterArtifact:
    manifest = {"config": model.config.to_dict(), "backbone_sha256": backbone_sha256(model),
                "tensors": {n: list(t.shape) for n, t in model.adapt_state_dict().items()}}
    return AdapterArtifact(manifest, {n: t.clone() for n, t in model.adapt_state_dict().items()})


@pytest.mark.parametrize("kind", ["bottleneck", "lora"])
def test_activating_a_staged_set_switches_outputs_without_copying_the_backbone(make_model, kind):
    model, other = make_model(kind, seed=0), make_model(kind, seed=0, perturb=False)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():  # `other` = same backbone, different adapters
        for name, param in other.named_parameters():
            if other.param_group(name) == "adapters":
                param.add_(0.3)
    slots = AdapterSlots(model, "v1")
    backbone = {n: p.data_ptr() for n, p in model.named_parameters() if not model.trainable_in("adapt", n)}
    ids = torch.tensor([[5, 6, 7, 1]])
    with torch.no_grad():
        before = model.backbone.get_encoder()(input_ids=ids).last_hidden_state
    slots.stage("v2", artifact_of(other))
    slots.activate("v2")
    with torch.no_grad():
        after = model.backbone.get_encoder()(input_ids=ids).last_hidden_state
        expected = other.backbone.get_encoder()(input_ids=ids).last_hidden_state
    assert torch.allclose(after, expected, atol=1e-6) and not torch.allclose(before, after)
    assert backbone == {n: p.data_ptr() for n, p in model.named_parameters() if not model.trainable_in("adapt", n)}
    slots.activate("v1")
    with torch.no_grad():
        assert torch.allclose(model.backbone.get_encoder()(input_ids=ids).last_hidden_state, before)


def test_staging_refuses_a_foreign_backbone_and_the_active_name(make_model):
    model = make_model()
    slots = AdapterSlots(model, "v1")
    foreign = artifact_of(make_model(seed=3))
    with pytest.raises(ValueError, match="backbone"):
        slots.stage("v2", foreign)
    with pytest.raises(ValueError, match="active"):
        slots.stage("v1", artifact_of(model))
    assert slots.names() == ["v1"]


def test_a_trained_copy_leaves_the_original_set_untouched(make_model):
    model = make_model()
    slots = AdapterSlots(model, "v1")
    original = {n: t.clone() for n, t in model.adapt_state_dict().items()}
    slots.copy("v1", "candidate")
    slots.activate("candidate")
    with torch.no_grad():
        for param in model.adapt_state_dict().values():
            param.add_(1.0)
    slots.activate("v1")
    assert all(torch.equal(original[n], t) for n, t in model.adapt_state_dict().items())
    slots.drop("candidate")
    assert slots.names() == ["v1"] and slots.set_bytes() == sum(t.numel() * 4 for t in original.values())
