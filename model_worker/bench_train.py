"""`vip5 bench train`: training throughput of the item-token recipe per preset, on this machine.

In:  presets, catalogue size, batch size, sequence lengths (random item sequences; the cost of a step
     depends on their shape, not their content), content vectors of the text encoder's size.
Out: per preset: parameters, step time (ms, median of the timed steps), sequences/s (examples/s)
     and targets/s (tokens/s: every position of a sequence is a target), with the threads used.
"""

from __future__ import annotations

import argparse
import statistics
import time

from runtime.cli import add_command


def bench_preset(preset: str, *, n_items: int, batch_size: int, max_len: int, steps: int, feature_dim: int,
                 seed: int = 0) -> dict:
    import numpy as np
    import torch

    from model_worker.training import make_optimizer, train_step
    from model_worker.vip5model.config import VIP5Config
    from model_worker.vip5model.model import VIP5Model
    from model_worker.vip5model.tokenizer import build_template_tokenizer

    config = VIP5Config(backbone=preset, item_ids="tokens", n_items=n_items, image_feature_dim=feature_dim)
    model = VIP5Model.build(config, build_template_tokenizer([config.sequence_prompt], vocab_size=300), seed=seed)
    rng = np.random.default_rng(seed)
    model.item_tokens.set_features(range(1, n_items + 1), rng.standard_normal((n_items, feature_dim)))
    model.set_stage("pretrain")
    model.train()
    optimizer = make_optimizer(model, lr=1e-3, weight_decay=0.1)
    times, targets = [], 0
    for step in range(steps + 2):  # two warm-up steps
        lengths = rng.integers(3, max_len + 1, size=batch_size)
        rows = torch.zeros((batch_size, int(lengths.max()) + 1), dtype=torch.long)
        for b, length in enumerate(lengths):
            rows[b, :length + 1] = torch.from_numpy(np.concatenate([[n_items + 1], rng.integers(1, n_items + 1, length)]))
        started = time.perf_counter()
        train_step(model, optimizer, rows, lr=1e-3, grad_clip=1.0)
        if step >= 2:
            times.append(time.perf_counter() - started)
            targets += int(lengths.sum())
    step_s = statistics.median(times)
    return {"preset": preset, "params": sum(p.numel() for p in model.parameters()), "step_ms": round(step_s * 1e3, 1),
            "examples_per_s": round(batch_size * len(times) / sum(times), 1),
            "tokens_per_s": round(targets / sum(times), 1)}


def run_bench_train(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    return {"threads": args.threads, "n_items": args.items, "batch_size": args.batch_size, "max_len": args.max_len,
            "steps": args.steps,
            "presets": [bench_preset(p, n_items=args.items, batch_size=args.batch_size, max_len=args.max_len,
                                     steps=args.steps, feature_dim=args.feature_dim) for p in presets]}


def register(commands, bench) -> None:
    del commands
    p = add_command(bench, "train", run_bench_train,
                    help="training throughput of the item-token recipe per preset (examples/s, tokens/s, step ms)")
    p.add_argument("--presets", default="mini,tiny,small")
    p.add_argument("--items", type=int, default=12101, help="catalogue size (Amazon Beauty: 12,101)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-len", type=int, default=20, help="sequence lengths are drawn from 3..max-len")
    p.add_argument("--steps", type=int, default=10, help="timed steps per preset (after two warm-up steps)")
    p.add_argument("--feature-dim", type=int, default=384, help="content vector size (384: the text encoder)")
    p.add_argument("--threads", type=int, default=2)
