"""The folder a `vip5 train --out RUN` writes, and how to find it again.

In:  a path given by a user: the run folder RUN or its saved model RUN/model.
Out: the run folder (train_config.json, stages.json, the retriever in RUN/retriever) and the
     model folder (vip5_config.json and the weights).
"""

from __future__ import annotations

from pathlib import Path

RETRIEVER_DIR = "retriever"  # <run>/retriever: the retriever `item_init="retriever"` fitted


def run_dirs(path: str | Path) -> tuple[Path, Path]:
    """(run, model) folders of a `vip5 train --out RUN`, given RUN or RUN/model (or a model folder
    saved on its own, whose run is taken to be its parent)."""
    path = Path(path)
    is_model = (path / "vip5_config.json").exists() and not (path / "train_config.json").exists()
    if is_model:
        return path.parent, path
    return path, path / "model" if (path / "model" / "vip5_config.json").exists() else path
