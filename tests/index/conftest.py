"""Fixtures for the index tests: the vendored fashion thumbnails and one shared Lite0 encoder."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

FASHION_DIR = Path(__file__).resolve().parents[1] / "data" / "fashion"


@pytest.fixture(scope="session")
def fashion() -> tuple[list[Path], list[str]]:
    """48 real product thumbnails (60x80 JPEG) and their article types."""
    with open(FASHION_DIR / "products.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [FASHION_DIR / r["image"] for r in rows], [r["article_type"] for r in rows]


@pytest.fixture(scope="session")
def lite0_encoder():
    from index.encoders import EncoderConfig, build_encoder

    return build_encoder(EncoderConfig(device="cpu"))


@pytest.fixture(scope="session")
def fashion_vectors(fashion, lite0_encoder) -> np.ndarray:
    """(48, 1280) Lite0 vectors of the vendored thumbnails."""
    result = lite0_encoder.embed(fashion[0])
    assert result.ok.all()
    return result.vectors


def clustered(n: int, dim: int, *, clusters: int = 20, seed: int = 0) -> np.ndarray:
    """(n, dim) unit vectors around `clusters` random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    rows = centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)
