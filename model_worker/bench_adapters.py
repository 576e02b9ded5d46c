"""`vip5 bench adapters --json`: parameter-efficient tuning against full fine-tuning, and swap cost.

On the t5-small architecture (random weights: cost does not depend on them), the same batch of
direct-recommendation prompts, measured side by side in one run. Each configuration trains in its
own fresh process so its peak memory (max RSS on CPU, max allocated on CUDA) is its own:
  full        stage "pretrain": the whole backbone and the multimodal parts train
  bottleneck  stage "adapt" with the paper's bottleneck adapters (backbone frozen)
  lora        stage "adapt" with peft LoRA (backbone frozen)
Ratios are adapter over full (the paper reports 3.58% trainable, about 0.79x time, 0.82x memory).
swap_ms: verifying an artifact (read, signature, checksum), staging it into a standby adapter slot
and activating it (a pointer change, vip5model/slots.py), as the model worker does between batches.
swap_memory: how much the process's memory grows at its peak during such a swap, next to the size
of one adapter set (adapter_set_mb). On CPU it is sampled from the resident set size
(/proc/self/statm, every 0.2 ms, in a thread); on CUDA it is torch's max allocated.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from runtime.cli import add_command

KINDS = ("full", "bottleneck", "lora")


def _peak_memory_mb(device: str) -> float:
    import resource

    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _model_and_batch(kind: str, preset: str, batch_size: int, device: str):
    import random

    import numpy as np

    from model_worker.tuning import ExampleConfig, position_prompts
    from model_worker.vip5model.config import VIP5Config
    from model_worker.vip5model.model import VIP5Model
    from model_worker.vip5model.tokenizer import build_template_tokenizer

    adapter_kind = "lora" if kind == "lora" else "bottleneck"
    model = VIP5Model.build(VIP5Config(backbone=preset, adapter_kind=adapter_kind), build_template_tokenizer(),
                            seed=0).to(device)
    model.set_stage("pretrain" if kind == "full" else "adapt")
    rng = random.Random(0)
    catalogue = [f"item_{n}" for n in range(1000)]
    features = {i: np.random.default_rng(n).random(model.config.image_feature_dim, dtype=np.float32)
                for n, i in enumerate(catalogue)}
    prompts = [p for n in range(batch_size)
               for p in position_prompts(f"user_{n}", rng.sample(catalogue, 10), catalogue[n], catalogue, rng,
                                         ExampleConfig(history_len=10, direct_candidates=20))][1::2][:batch_size]
    batch = model.encoder.encode(prompts, features).to(device)
    return model, batch


def measure(kind: str, *, preset: str, batch_size: int, steps: int, device: str) -> dict:
    """One configuration in this process: trainable share, median step time, peak memory."""
    import statistics

    import torch

    torch.manual_seed(0)
    model, batch = _model_and_batch(kind, preset, batch_size, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    times = []
    for _ in range(steps + 1):  # the first step warms up allocators and kernels
        start = time.perf_counter()
        loss = model(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    counts = model.trainable_parameters()
    return {"kind": kind, "trainable_params": counts["trainable_params"], "total_params": counts["total_params"],
            "trainable_fraction": counts["trainable_fraction"], "step_ms": statistics.median(times[1:]) * 1000,
            "peak_memory_mb": _peak_memory_mb(device), "tokens_per_prompt": int(batch.input_ids.shape[1])}


def _rss_bytes() -> int:
    import os

    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _release_free_heap() -> None:
    """Give freed heap pages back to the OS (glibc malloc_trim), so that memory the swap reuses from
    earlier allocations shows up as growth instead of hiding in the baseline."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _PeakRSS:
    """Samples the resident set size in a thread while the `with` block runs; `.peak` in bytes."""

    def __init__(self, interval_s: float = 0.0002):
        import threading

        self.interval_s, self.peak = interval_s, _rss_bytes()
        self._stop, self._thread = threading.Event(), threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def measure_swap(*, preset: str, device: str, repeats: int = 3) -> dict:
    """Median ms to verify an adapter artifact, stage it and activate it; and the peak memory growth
    of the first swap against the size of one adapter set."""
    import gc
    import os
    import statistics
    import tempfile

    import torch

    from model_worker.artifacts import ArtifactStore, load_verified
    from model_worker.ranker import RankerConfig, VIP5Ranker
    from model_worker.vip5model.checkpoint import backbone_sha256

    model, _ = _model_and_batch("bottleneck", preset, 1, device)
    backbone_id = backbone_sha256(model)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(f"{tmp}/model")
        store = ArtifactStore(f"{tmp}/artifacts", signing_key=os.urandom(32))  # signature checked in the timing
        updates = [store.publish(model, version=f"v{n}", parent_version=None, metrics={}, backbone_id=backbone_id)
                   for n in range(2, 3 + repeats)]
        del model
        ranker = VIP5Ranker.load(RankerConfig(model_dir=f"{tmp}/model", device=device))
        ranker.model.set_stage("adapt")  # as a served model: the backbone digest is computed once
        backbone_sha256(ranker.model)
        set_bytes = ranker.slots.set_bytes()
        model_bytes = sum(p.numel() * p.element_size() for p in ranker.model.parameters())

        def swap(update) -> None:
            ranker.stage(load_verified(update, backbone_id=ranker.backbone_id, store=store), update.version)
            ranker.activate(update.version)

        gc.collect()
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            swap(updates[0])
            torch.cuda.synchronize()
            growth, after = torch.cuda.max_memory_allocated() - base, torch.cuda.memory_allocated() - base
        else:
            _release_free_heap()
            base = _rss_bytes()
            with _PeakRSS() as peak:
                swap(updates[0])
            gc.collect()
            growth, after = peak.peak - base, _rss_bytes() - base
        times = []
        for update in updates[1:]:
            start = time.perf_counter()
            swap(update)
            times.append((time.perf_counter() - start) * 1000)
    return {"swap_ms": statistics.median(times), "model_mb": model_bytes / 2**20, "adapter_set_mb": set_bytes / 2**20,
            "swap_peak_growth_mb": growth / 2**20, "swap_growth_after_mb": after / 2**20,
            "swap_peak_growth_over_adapter_set": growth / set_bytes,
            "swap_memory_measure": "torch.cuda max_memory_allocated" if device == "cuda"
            else "resident set size sampled every 0.2 ms (/proc/self/statm)"}


def _in_subprocess(kind: str, args: argparse.Namespace) -> dict:
    code = ("import json, sys; from model_worker.bench_adapters import measure; "
            f"print(json.dumps(measure({kind!r}, preset={args.preset!r}, batch_size={args.batch_size}, "
            f"steps={args.steps}, device={args.device!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_bench_adapters(args: argparse.Namespace) -> dict:
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    runs = {kind: _in_subprocess(kind, args) for kind in KINDS}
    full = runs["full"]

    def ratios(kind: str) -> dict:
        run = runs[kind]
        return {"trainable_fraction": run["trainable_fraction"],
                "memory_ratio": run["peak_memory_mb"] / full["peak_memory_mb"],
                "step_time_ratio": run["step_ms"] / full["step_ms"]}

    default = ratios("bottleneck")
    return {"preset": args.preset, "device": args.device, "batch_size": args.batch_size, **default,
            "by_kind": {kind: {**runs[kind], **(ratios(kind) if kind != "full" else {})} for kind in KINDS},
            **measure_swap(preset=args.swap_preset or args.preset, device=args.device),
            "swap_preset": args.swap_preset or args.preset,
            "memory_measure": "peak RSS of a fresh process" if args.device == "cpu" else "torch max allocated"}


def register(commands, bench) -> None:
    p = add_command(bench, "adapters", run_bench_adapters,
                    "trainable share, memory and step time of adapter tuning vs full fine-tuning; swap latency")
    p.add_argument("--preset", default="t5-small")
    p.add_argument("--swap-preset", default=None, help="preset of the swap measurement (default: --preset)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
