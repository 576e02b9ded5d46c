"""Model-side numbers on one device (CUDA or CPU), runnable without kafka, faust or faiss.

Out: one JSON file (`--out`), rewritten after every section so a run cut short keeps what it did:
- `rerank`: `model_worker.bench_rerank.run_bench` per preset: ms per request of exact trie scoring,
  naive scoring, beam search and the encoder alone, for one direct prompt of C candidates.
- `item_token_scoring`: item-token models (`item_ids="tokens"`, I items): `next_item_scores` of B
  histories of L items, requests/s per preset and batch size (one request = one history).
- `item_token_training`: optimizer steps/s of the item-token recipe (`sequence_loss`: every
  position a target, softmax over all I items; AdamW as `training.make_optimizer`) on random
  sequences of B x (L+1) rows.
A section that fails records its error and the run goes on. CUDA timings synchronise before the
clock stops; weights are random (speed does not depend on them), float32 as served.

    PYTHONPATH=. python scripts/gpu_bench.py --device cuda --out gpu_bench.json
    PYTHONPATH=. python scripts/gpu_bench.py --device cpu --quick --out /tmp/cpu.json   # smoke test
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import traceback
from pathlib import Path

import numpy as np
import torch

FEATURE_DIM = 1280  # EfficientNet-Lite0 content vectors, the offline default


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    result: dict = {"environment": environment(args.device)}

    def section(name: str, fn) -> None:
        start = time.perf_counter()
        try:
            result[name] = fn()
        except Exception as err:  # one broken section must not cost the others' numbers
            result[name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=4)}
        result[name + "_wall_s"] = round(time.perf_counter() - start, 1)
        out.write_text(json.dumps(result, indent=2))
        print(name, json.dumps(result[name])[:2000], flush=True)

    section("rerank", lambda: [rerank(p, args) for p in args.rerank_presets])
    section("item_token_scoring", lambda: [scoring(p, args) for p in args.token_presets])
    section("item_token_training", lambda: [training(p, args) for p in args.token_presets])


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--out", default="gpu_bench.json")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a CPU smoke test of the script")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    quick = args.quick
    args.rerank_presets = ["tiny"] if quick else ["small", "t5-small"]
    args.candidates, args.requests, args.beams = (20, 2, 5) if quick else (100, 5, 20)
    args.token_presets = ["mini"] if quick else ["mini", "small"]
    args.n_items = 500 if quick else 12101
    args.batches = [1, 8] if quick else [1, 32, 256]
    args.history_len = 50  # the recipe's max_len
    args.train_batches = [8] if quick else [128, 512]
    args.min_s = 0.2 if quick else 2.0  # each timing runs at least this long
    return args


def environment(device: str) -> dict:
    env = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
           "cpu_threads": torch.get_num_threads()}
    if device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda but torch sees no CUDA device")
        env |= {"gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda,
                "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
    return env


def timed_rate(fn, *, device: str, min_s: float, min_calls: int = 3) -> float:
    """Calls per second of `fn()` after two warm-up calls, over at least `min_s` and `min_calls`."""
    for _ in range(2):
        fn()
    _sync(device)
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < min_s:
        fn()
        calls += 1
        _sync(device)
    return calls / (time.perf_counter() - start)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def rerank(preset: str, args) -> dict:
    from model_worker.bench_rerank import BenchSettings, run_bench
    from model_worker.vip5model.config import VIP5Config

    settings = BenchSettings(requests=args.requests, candidates=args.candidates, num_beams=args.beams,
                             threads=args.threads, device=args.device)
    out = run_bench(VIP5Config(backbone=preset), settings)
    out["exact_over_beam"] = round(out["exact_ms"] / out["beam_ms"], 3)
    return out


def item_token_model(preset: str, args, *, dropout_rate: float = 0.0):
    """A random item-token model of `preset` over `args.n_items` items, every item with content."""
    from model_worker.vip5model.config import VIP5Config
    from model_worker.vip5model.model import VIP5Model
    from model_worker.vip5model.tokenizer import build_template_tokenizer

    config = VIP5Config(backbone=preset, item_ids="tokens", n_items=args.n_items, image_feature_dim=FEATURE_DIM,
                        dropout_rate=dropout_rate)
    tokenizer = build_template_tokenizer([config.sequence_prompt], vocab_size=4000, image_token=config.image_token)
    model = VIP5Model.build(config, tokenizer, seed=0)
    rows = np.arange(1, args.n_items + 1)
    model.item_tokens.set_features(rows, np.random.default_rng(0).standard_normal((len(rows), FEATURE_DIM),
                                                                                   dtype=np.float32))
    return model.to(args.device)


def random_rows(batch: int, length: int, n_items: int, *, bos: int | None, device: str) -> torch.Tensor:
    """(B, L) item rows in 1..I, or (B, L+1) led by `bos`; a quarter of the rows half padded."""
    rng = np.random.default_rng(batch)
    rows = rng.integers(1, n_items + 1, (batch, length))
    rows[: batch // 4, length // 2:] = 0  # right padding, as short histories have
    if bos is not None:
        rows = np.concatenate([np.full((batch, 1), bos), rows], axis=1)
    return torch.as_tensor(rows, dtype=torch.long, device=device)


def scoring(preset: str, args) -> dict:
    model = item_token_model(preset, args).eval()
    params = sum(p.numel() for p in model.parameters())
    out = {"preset": preset, "n_items": args.n_items, "history_len": args.history_len, "params": params}
    for batch in args.batches:
        histories = random_rows(batch, args.history_len, args.n_items, bos=None, device=args.device)  # (B, L)
        lengths = (histories > 0).sum(dim=1)  # (B,)
        with torch.inference_mode():
            calls = timed_rate(lambda h=histories, n=lengths: model.next_item_scores(h, n), device=args.device,
                               min_s=args.min_s)
        out[f"batch{batch}"] = {"requests_per_s": round(calls * batch, 1), "ms_per_call": round(1000 / calls, 3)}
    return out


def training(preset: str, args) -> dict:
    from model_worker.offline.train import TrainConfig
    from model_worker.training import make_optimizer, train_step

    model = item_token_model(preset, args, dropout_rate=0.1)  # the recipe's dropout
    model.set_stage("pretrain")
    model.train()
    recipe = TrainConfig(out_dir="unused", preset=preset)
    optimizer = make_optimizer(model, lr=recipe.lr, weight_decay=recipe.weight_decay)
    out = {"preset": preset, "n_items": args.n_items, "seq_len": args.history_len}
    for batch in args.train_batches:
        rows = random_rows(batch, args.history_len, args.n_items, bos=model.item_tokens.bos, device=args.device)
        losses: list[float] = []

        def step(r=rows, seen=losses) -> None:
            seen.append(train_step(model, optimizer, r, lr=1e-3, grad_clip=1.0))

        steps = timed_rate(step, device=args.device, min_s=args.min_s)
        out[f"batch{batch}"] = {"steps_per_s": round(steps, 2), "sequences_per_s": round(steps * batch, 1),
                                "last_loss": round(losses[-1], 3)}
    return out


if __name__ == "__main__":
    main()
