import numpy as np
import torch

from model_worker.vip5model.prompts import explanation_prompt, sequential_prompt


def _batch(model, features):
    prompts = [sequential_prompt("A-1", 7, [11, 12, 13], 14), explanation_prompt("C-1", 8, 21, "great color")]
    return model.encoder.encode(prompts, features)


def test_image_features_change_embeddings_at_placeholders_and_nowhere_else(make_model, features):
    model = make_model()
    batch = _batch(model, features)
    other = {k: v + 1.0 for k, v in features.items()}
    with torch.no_grad():
        before, after = model.embed(batch), model.embed(_batch(model, other))
    changed = (before - after).abs().amax(dim=-1) > 1e-6  # (B, T)
    assert torch.equal(changed, batch.modality_ids == 1)


def test_missing_image_uses_the_learned_no_image_tokens(make_model, features):
    model = make_model()
    missing = {k: v for k, v in features.items() if k != "12"}
    batch = _batch(model, missing)
    assert batch.image_mask[0].tolist() == [True, False, True]
    with torch.no_grad():
        x = model.embed(batch)
    positions = (batch.modality_ids[0] == 1).nonzero().flatten()[2:4]  # item "12"'s two placeholders
    extras = model.modality_embedding.weight[1] + model.whole_word_embedding(batch.whole_word_ids[0, positions])
    assert torch.allclose(x[0, positions], model.no_image + extras, atol=1e-6)
    out = model(batch)
    assert torch.isfinite(out["loss"])


def test_prompt_without_any_image_feature_still_trains(make_model):
    model = make_model()
    batch = _batch(model, None)
    assert not batch.image_mask.any()
    model.train()
    model(batch)["loss"].backward()
    assert model.no_image.grad is not None and model.no_image.grad.abs().sum() > 0


def test_loss_averages_each_prompt_over_its_own_target_tokens(make_model, features):
    model = make_model()
    batch = _batch(model, features)
    out = model(batch)
    assert out["per_prompt_loss"].shape == (2,)
    assert torch.allclose(out["loss"], out["per_prompt_loss"].mean())


def test_generate_text_returns_one_string_per_prompt(make_model, features):
    model = make_model()
    texts = model.generate_text(_batch(model, features), max_new_tokens=4)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_whole_word_embedding_can_be_switched_off(make_model, features):
    model = make_model(whole_word_embedding=False)
    assert model.whole_word_embedding is None
    assert np.isfinite(model(_batch(model, features))["loss"].item())
