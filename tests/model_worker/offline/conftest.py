"""Fixtures: the vendored small cut of Amazon Beauty and Musical Instruments reviews."""

from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "beauty_small"


@pytest.fixture(scope="session")
def beauty_dir() -> Path:
    return DATA_DIR


@pytest.fixture(scope="session")
def reviews_file() -> Path:
    return DATA_DIR / "musical_instruments" / "reviews_Musical_Instruments_5.json.gz"


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The build machines are small and shared: one thread is faster than contended two."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
