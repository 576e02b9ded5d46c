"""VIP5 behind the serving loop's `Ranker` protocol (model_worker.serve): wire records in, ranked lists out.

    RerankRequest records (wire) ──► ScoringRequest (model view) ──► Reranker: direct-prompt
    log-likelihood per candidate ──► [(item_id, score)] best first

`VIP5Ranker.load(RankerConfig)` reads a model directory (VIP5Model.save_pretrained), moves it to
the device (CUDA when present and asked for) and names the versions every Recommendation carries:
`model_version` (backbone identity) and `adapter_version` (the active adapter slot, BASE_VERSION
until another is activated). One VIP5Ranker and one Reranker live as long as the model: a new
adapter version is staged into a named slot (`stage`, verified tensors only) and switched in
between batches (`activate`, a pointer change; see vip5model/slots.py). The model is never copied.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from index.candidates import lowest_filled
from model_worker.rerank import RerankConfig, Reranker, ScoringRequest
from model_worker.vip5model.model import VIP5Model
from model_worker.vip5model.prompts import TEMPLATES, explanation_prompt
from model_worker.vip5model.slots import AdapterSlots
from schemas.records import Candidate, RerankRequest

log = logging.getLogger(__name__)

BASE_VERSION = "v1"  # the adapter a model directory ships with; trained versions follow as v2, v3, ...


@dataclass(frozen=True)
class RankerConfig:
    model_dir: str
    device: str = "auto"  # "auto": cuda when available
    rerank: RerankConfig = field(default_factory=RerankConfig)
    explanation_template: str = "C-1"
    explanation_max_tokens: int = 24

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device: {self.device!r} must be auto, cpu or cuda")
        template = TEMPLATES.get(self.explanation_template)
        if template is None or template.family != "explanation" or "star_rating" in template.fields:
            raise ValueError(f"explanation_template: {self.explanation_template!r} is not a plain explanation template")
        if self.explanation_max_tokens < 1:
            raise ValueError("explanation_max_tokens: must be >= 1")


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device")
    return device


def affinities(candidates: Sequence[Candidate]) -> tuple[float, ...] | None:
    """The retriever's affinity of each candidate, those without one at the lowest given; None when
    no candidate has one (no retriever upstream)."""
    return lowest_filled([c.affinity for c in candidates])


class VIP5Ranker:
    def __init__(self, model: VIP5Model, config: RankerConfig, *, backbone_id: str, adapter_version: str = BASE_VERSION):
        self.model, self.config = model.eval(), config
        self.backbone_id = backbone_id
        self.model_version = f"vip5-{model.config.backbone}-{backbone_id[:12]}"
        self.slots = AdapterSlots(model, adapter_version)
        self._slots_lock = threading.Lock()  # stage runs on the adapter-updates thread, activate on the main one
        self.reranker = Reranker(model, config=config.rerank)

    @property
    def adapter_version(self) -> str:
        return self.slots.active

    @classmethod
    def load(cls, config: RankerConfig) -> VIP5Ranker:
        if not Path(config.model_dir).is_dir():
            raise FileNotFoundError(f"model_dir: no model directory at {config.model_dir} "
                                    "(create one with `vip5 train` or VIP5Model.save_pretrained)")
        from model_worker.vip5model.checkpoint import backbone_sha256

        model = VIP5Model.from_pretrained(config.model_dir).to(resolve_device(config.device))
        ranker = cls(model, config, backbone_id=backbone_sha256(model))
        log.info("loaded %s from %s on %s", ranker.model_version, config.model_dir, next(model.parameters()).device)
        return ranker

    def stage(self, artifact, version: str) -> None:
        """Keep `artifact` as the standby slot `version` (checks config, backbone, keys and shapes);
        the active version keeps serving until `activate(version)`. A standby staged earlier and not
        activated is superseded (freed), so at most one adapter set waits beside the active one."""
        with self._slots_lock:
            for name in self.slots.names():
                if name != self.slots.active:
                    self.slots.drop(name)
            self.slots.stage(version, artifact)

    def activate(self, version: str) -> None:
        """Serve `version` from the next call on (call between batches); the previous set is freed."""
        with self._slots_lock:
            if version not in self.slots:
                log.warning("adapter %s was superseded before it could be activated", version)
                return
            previous = self.slots.active
            self.slots.activate(version)
            if previous != version:
                self.slots.drop(previous)

    @torch.inference_mode()
    def rank(self, requests: Sequence[RerankRequest],
             features: Mapping[str, np.ndarray]) -> list[list[tuple[str, float]]]:
        scoring = [ScoringRequest(user_id=r.user_id, history=r.history,
                                  candidates=tuple(c.item_id for c in r.candidates),
                                  retrieval_scores=affinities(r.candidates)) for r in requests]
        scoring = self.reranker.with_catalogue_candidates(scoring)  # item-token models retrieve too
        scores = self.reranker.score(scoring, features)
        return [sorted(zip(r.candidates, s, strict=True), key=lambda pair: -pair[1])
                for r, s in zip(scoring, scores, strict=True)]

    @torch.inference_mode()
    def explain(self, pairs: Sequence[tuple[str, str]], features: Mapping[str, np.ndarray]) -> list[str]:
        """A generated explanation per (user_id, item_id), all pairs in one batch (decoding: model.EXPLANATION_DECODING)."""
        if not pairs:
            return []
        prompts = [explanation_prompt(self.config.explanation_template, user, item) for user, item in pairs]
        batch = self.model.encoder.encode(prompts, features, with_labels=False)
        batch = batch.to(next(self.model.parameters()).device)
        return self.model.explain_text(batch, max_new_tokens=self.config.explanation_max_tokens)
