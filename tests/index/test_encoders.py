from __future__ import annotations

import numpy as np
import pytest
import torch

from index.bench import precision_at_k, random_neighbour_rate
from index.encoders import EncoderConfig, build_encoder
from index.images import square_tensor
from index.lite0 import EfficientNetLite0, load_lite0, packaged_weights_path

DIGITAL_WATCH, RUNNING_SHOE = 531, 770  # ImageNet-1k class indices


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A random CLIP vision tower (D = 24) and its processor, saved to a local folder."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = tmp_path_factory.mktemp("tiny-clip")
    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=64, patch_size=16, projection_dim=24)
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def encoders(lite0_encoder, tiny_clip_dir):
    return {"lite0": lite0_encoder, "clip": build_encoder(EncoderConfig(kind="clip", model=str(tiny_clip_dir), device="cpu"))}


@pytest.mark.parametrize("kind", ["lite0", "clip"])
def test_encoder_contract_unit_rows_of_its_dim_and_per_item_errors(kind, encoders, fashion):
    encoder = encoders[kind]
    good = fashion[0][:3]
    result = encoder.embed([good[0], b"", good[1], b"not an image", good[2]])
    assert result.vectors.shape == (5, encoder.dim) and result.vectors.dtype == np.float32
    assert result.ok.tolist() == [True, False, True, False, True]
    assert [e.reason for e in result.errors if e is not None] == ["empty", "unsupported_format"]
    np.testing.assert_allclose(np.linalg.norm(result.vectors[result.ok], axis=1), 1.0, atol=1e-5)
    assert not result.vectors[~result.ok].any()
    alone = encoder.embed(good).vectors  # a failing neighbour in the batch changes nothing
    np.testing.assert_allclose(result.vectors[result.ok], alone, atol=1e-5)
    assert isinstance(encoder.encoder_id, str) and encoder.encoder_id


@pytest.mark.parametrize("kind", ["lite0", "clip"])
def test_any_failure_of_one_image_is_that_items_error_and_spares_its_neighbours(kind, encoders, fashion, monkeypatch):
    import index.encoders as module

    encoder, good = encoders[kind], fashion[0][:2]
    real_load = module.load_image
    failures = {b"dir": IsADirectoryError(21, "Is a directory", "/srv/private/x"), b"oom": MemoryError(),
                b"perm": PermissionError(13, "Permission denied", "/root/.ssh/id_rsa"), b"bug": KeyError("x")}

    def load(source, limits):
        if source in failures:
            raise failures[source]
        return real_load(source, limits)

    monkeypatch.setattr(module, "load_image", load)
    result = encoder.embed([good[0], b"dir", b"oom", "shoes/a.jpg", b"perm", b"bug", good[1]])
    assert result.ok.tolist() == [True, False, False, False, False, False, True]
    assert [e.reason for e in result.errors if e is not None] == [
        "unreadable", "too_large", "unsupported_source", "unreadable", "unreadable"]
    assert not any("/srv" in str(e) or "/root" in str(e) for e in result.errors if e is not None)
    np.testing.assert_allclose(result.vectors[result.ok], encoder.embed(good).vectors, atol=1e-5)


def test_a_failing_batched_forward_is_retried_image_by_image(lite0_encoder, fashion, monkeypatch):
    good, real = fashion[0][:3], type(lite0_encoder)._forward

    def forward(self, batch):
        if len(batch) > 1 or not batch[0].any():
            raise RuntimeError("out of memory")
        return real(self, batch)

    monkeypatch.setattr(type(lite0_encoder), "_forward", forward)
    blank = np.zeros((3, 224, 224), np.float32)  # stands for the one image the model cannot take
    monkeypatch.setattr(type(lite0_encoder), "_prepare",
                        lambda self, image: blank if image.size == (1, 1) else square_tensor(image, 224))
    result = lite0_encoder.embed([good[0], io_png((1, 1)), good[1]])
    assert result.ok.tolist() == [True, False, True]
    assert result.errors[1].reason == "unreadable"


def io_png(size) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size).save(buffer, format="PNG")
    return buffer.getvalue()


def test_embed_one_raises_the_items_error(lite0_encoder):
    with pytest.raises(ValueError, match="^empty: "):
        lite0_encoder.embed_one(b"")


def test_embedding_is_deterministic(lite0_encoder, fashion, fashion_vectors):
    again = lite0_encoder.embed(fashion[0][:4]).vectors
    np.testing.assert_allclose(again, fashion_vectors[:4], atol=1e-5)


def test_offline_encoder_neighbours_mostly_share_the_article_type(fashion, fashion_vectors):
    labels = fashion[1]
    precision = precision_at_k(fashion_vectors, labels, 5)
    random_rate = random_neighbour_rate(labels)  # 11/47 with 4 types x 12
    assert random_rate == pytest.approx(11 / 47)
    assert precision > 0.75 > 3 * random_rate


def test_nearest_neighbour_of_a_shoe_is_mostly_a_shoe(fashion, fashion_vectors):
    labels = np.asarray(fashion[1])
    sims = fashion_vectors @ fashion_vectors.T
    np.fill_diagonal(sims, -2.0)
    shoes = np.flatnonzero(labels == "Sports Shoes")
    assert np.mean(labels[sims[shoes].argmax(axis=1)] == "Sports Shoes") >= 0.75


def test_lite0_weights_load_exactly_and_classify_real_products(lite0_encoder, fashion):
    from index.images import load_image, square_tensor

    model = lite0_encoder.model
    paths, labels = fashion
    watch = paths[labels.index("Watches")]
    shoe = paths[labels.index("Sports Shoes")]
    x = torch.from_numpy(np.stack([square_tensor(load_image(p), 224) for p in (watch, shoe)]))
    with torch.inference_mode():
        top5 = model(x).topk(5).indices.tolist()
    assert DIGITAL_WATCH in top5[0] or 826 in top5[0]  # digital watch or stopwatch
    assert RUNNING_SHOE in top5[1]


def test_lite0_rejects_weights_with_missing_keys(tmp_path):
    state = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    del state["_blocks.3._bn1.running_var"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(AssertionError, match="missing keys .*_blocks.3._bn1.running_var"):
        load_lite0(tmp_path / "broken.pth")


def test_lite0_same_padding_gives_ceil_sizes_for_any_input():
    model = EfficientNetLite0().eval()
    with torch.inference_mode():
        assert model.features(torch.zeros(2, 3, 81, 60)).shape == (2, 1280)
        stem = model._conv_stem(torch.zeros(1, 3, 81, 60))
    assert stem.shape[-2:] == (41, 30)


def test_clip_loads_from_a_local_folder_with_its_projection_dim(encoders):
    assert encoders["clip"].dim == 24 and encoders["clip"].encoder_id.startswith("clip:")


def test_clip_missing_model_gives_a_clear_error(tmp_path):
    with pytest.raises(OSError, match="cannot load CLIP model"):
        build_encoder(EncoderConfig(kind="clip", model=str(tmp_path / "absent"), device="cpu"))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"kind": "vit"}, "kind"), ({"kind": "clip"}, "model"), ({"image_size": 8}, "image_size"),
     ({"batch_size": 0}, "batch_size"), ({"device": "tpu"}, "device")],
)
def test_encoder_config_rejects_invalid_field_naming_it(kwargs, field):
    with pytest.raises(ValueError, match=f"EncoderConfig.{field}"):
        EncoderConfig(**kwargs)


def test_asking_for_cuda_without_one_fails_clearly():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="EncoderConfig.device is 'cuda' but torch sees no CUDA device"):
        build_encoder(EncoderConfig(device="cuda"))


@pytest.mark.gpu
def test_lite0_runs_on_cuda_and_matches_cpu(fashion, fashion_vectors):
    encoder = build_encoder(EncoderConfig(device="cuda"))
    np.testing.assert_allclose(encoder.embed(fashion[0][:4]).vectors, fashion_vectors[:4], atol=1e-3)
