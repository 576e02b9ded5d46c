"""Re-ranking cost: exact trie scoring vs the naive form vs beam search, on the same prompts.

In: a VIP5Config (random weights) and `BenchSettings` (device "cpu" or "cuda": the model and every
tensor it reads live there; CUDA timings synchronise before the clock stops). Out: a dict with medians over requests of
milliseconds per request (`exact_ms`, `naive_ms`, `beam_ms`, and `encoder_ms` for the encoder
alone), and `rankings_agree` / `max_abs_score_diff` between exact and naive scoring. Each request
is one direct prompt (user, history, candidate list, every item with an image) scored alone.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class BenchSettings:
    requests: int = 5
    candidates: int = 100
    num_beams: int = 20
    history_len: int = 10
    catalogue_size: int = 12101
    threads: int = 2
    vocab_size: int | None = 32128
    seed: int = 0
    device: str = "cpu"  # "cpu" or "cuda"

    def __post_init__(self) -> None:
        for name in ("requests", "candidates", "num_beams", "catalogue_size", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"BenchSettings.{name} must be >= 1")
        if self.candidates + self.history_len > self.catalogue_size:
            raise ValueError("BenchSettings.catalogue_size must exceed candidates + history_len")
        if self.num_beams > self.candidates:
            raise ValueError("BenchSettings.num_beams must be <= candidates")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"BenchSettings.device must be 'cpu' or 'cuda', got {self.device!r}")


def _requests(settings: BenchSettings):
    from model_worker.rerank import ScoringRequest

    rng = np.random.default_rng(settings.seed)
    out = []
    for user in range(settings.requests):
        items = rng.choice(np.arange(1, settings.catalogue_size + 1), settings.candidates + settings.history_len,
                           replace=False).astype(str)
        out.append(ScoringRequest(str(user + 1), tuple(items[: settings.history_len]),
                                 tuple(items[settings.history_len:])))
    return out


def _median_ms(fn, requests, *, device: str = "cpu") -> float:
    times = []
    for request in requests:
        start = time.perf_counter()
        fn([request])
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 2)


def run_bench(config, settings: BenchSettings) -> dict:
    from model_worker.rerank import RerankConfig, Reranker
    from model_worker.vip5model.model import VIP5Model
    from model_worker.vip5model.tokenizer import build_template_tokenizer

    torch.set_num_threads(settings.threads)
    if config.is_preset and settings.vocab_size and config.backbone in ("tiny", "small"):
        config = config.replace(vocab_size=settings.vocab_size)
    tokenizer = build_template_tokenizer(image_token=config.image_token) if config.is_preset else None
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("BenchSettings.device is 'cuda' but torch sees no CUDA device")
    model = VIP5Model.build(config, tokenizer, seed=settings.seed).to(settings.device).eval()
    rng = np.random.default_rng(settings.seed)
    features = {str(i): rng.standard_normal(config.image_feature_dim).astype(np.float32)
                for i in range(1, settings.catalogue_size + 1)}
    reranker = Reranker(model, features, RerankConfig(history_len=settings.history_len))
    requests = _requests(settings)

    exact, naive = reranker.score(requests), reranker.score_naive(requests)
    agree = all(np.array_equal(np.argsort(-np.array(e), kind="stable"), np.argsort(-np.array(n), kind="stable"))
                for e, n in zip(exact, naive, strict=True))
    max_diff = max(float(np.max(np.abs(np.array(e) - np.array(n)))) for e, n in zip(exact, naive, strict=True))
    reranker.score(requests[:1])  # warm-up (CUDA: kernels and allocator)
    reranker.beam(requests[:1], num_beams=settings.num_beams)
    batch = next(reranker.encode_requests(requests[:1]))[1].to(settings.device)
    device = settings.device
    with torch.inference_mode():
        encoder_ms = _median_ms(lambda _: model.encode(batch), requests, device=device)
    return {
        "preset": config.backbone,
        "adapter_kind": config.adapter_kind,
        "vocab_size": model.backbone.config.vocab_size,
        "device": settings.device,
        "gpu": torch.cuda.get_device_name() if settings.device == "cuda" else None,
        "threads": settings.threads,
        "requests": settings.requests,
        "candidates": settings.candidates,
        "prompt_tokens": int(batch.attention_mask.sum()),
        "candidate_tokens": round(float(np.mean([len(s) for s in model.encoder.target_token_ids(
            list(requests[0].candidates))])), 2),
        "encoder_ms": encoder_ms,
        "exact_ms": _median_ms(reranker.score, requests, device=device),
        "naive_ms": _median_ms(reranker.score_naive, requests, device=device),
        "beam_ms": _median_ms(lambda r: reranker.beam(r, num_beams=settings.num_beams), requests, device=device),
        "num_beams": settings.num_beams,
        "rankings_agree": bool(agree),
        "max_abs_score_diff": max_diff,
    }
