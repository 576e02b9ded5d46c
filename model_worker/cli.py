"""`vip5 model ...`, `vip5 bench rerank` and `vip5 bench train`: wiring only; the work lives in model_worker.vip5model and
model_worker.bench_rerank. Heavy imports happen inside the handlers."""

from __future__ import annotations

import argparse

from runtime.cli import add_command


def _model_args(parser: argparse.ArgumentParser, *, preset: str) -> None:
    parser.add_argument("--preset", default=preset, help="backbone preset (tiny, small, t5-small, t5-base) "
                        "or a local T5 directory")
    parser.add_argument("--adapter-kind", default="bottleneck", choices=("bottleneck", "lora"))
    parser.add_argument("--image-feature-dim", type=int, default=1280,
                        help="1280 EfficientNet-Lite0 (offline default), 512 CLIP ViT-B/32 (paper)")
    parser.add_argument("--image-tokens", type=int, default=2)
    parser.add_argument("--reduction-factor", type=int, default=8)
    parser.add_argument("--lora-rank", type=int, default=8)


def _config(args):
    from model_worker.vip5model.config import VIP5Config

    return VIP5Config(
        backbone=args.preset, adapter_kind=args.adapter_kind, image_feature_dim=args.image_feature_dim,
        image_tokens=args.image_tokens, reduction_factor=args.reduction_factor, lora_rank=args.lora_rank,
    )


def model_info(args: argparse.Namespace) -> dict:
    from model_worker.vip5model.model import VIP5Model
    from model_worker.vip5model.tokenizer import build_template_tokenizer

    if args.model_dir:
        model = VIP5Model.from_pretrained(args.model_dir)
    else:
        config = _config(args)
        tokenizer = build_template_tokenizer(image_token=config.image_token) if config.is_preset else None
        model = VIP5Model.build(config, tokenizer, seed=0)
    model.set_stage(args.stage)
    report = model.trainable_parameters()
    groups = report.pop("groups")
    backbone = model.backbone.config
    return {
        "preset": model.config.backbone,
        "adapter_kind": model.config.adapter_kind,
        "stage": args.stage,
        **report,
        "trainable_percent": round(100 * report["trainable_fraction"], 3),
        **{f"{group}_params": counts["params"] for group, counts in groups.items()},
        **{f"{group}_trainable": counts["trainable"] for group, counts in groups.items()},
        "d_model": backbone.d_model, "layers": f"{backbone.num_layers}+{backbone.num_decoder_layers}",
        "vocab_size": backbone.vocab_size, "image_feature_dim": model.config.image_feature_dim,
        "image_tokens": model.config.image_tokens, "stages_run": model.stages_run,
    }


def bench_rerank(args: argparse.Namespace) -> dict:
    from model_worker.bench_rerank import BenchSettings, run_bench

    settings = BenchSettings(
        requests=args.requests, candidates=args.candidates, num_beams=args.beams, history_len=args.history,
        catalogue_size=args.catalogue, threads=args.threads, vocab_size=args.vocab_size, seed=args.seed,
        device=args.device,
    )
    return run_bench(_config(args), settings)


def register(commands, bench) -> None:
    from model_worker import bench_train

    bench_train.register(commands, bench)
    model = commands.add_parser("model", help="VIP5 model utilities", description="VIP5 model utilities")
    model_commands = model.add_subparsers(dest="model_command", metavar="MODEL_COMMAND", required=True)
    info = add_command(model_commands, "info", model_info,
                       help="parameter counts by group and the trainable share (no weights needed)")
    _model_args(info, preset="t5-small")
    info.add_argument("--stage", default="adapt", choices=("pretrain", "adapt"))
    info.add_argument("--model-dir", default=None, help="report on a saved model directory instead")

    rerank = add_command(bench, "rerank", bench_rerank,
                         help="exact trie scoring vs naive scoring vs constrained beam search, ms per request")
    _model_args(rerank, preset="small")
    rerank.add_argument("--requests", type=int, default=5)
    rerank.add_argument("--candidates", type=int, default=100)
    rerank.add_argument("--beams", type=int, default=20)
    rerank.add_argument("--history", type=int, default=10, help="history items in each prompt")
    rerank.add_argument("--catalogue", type=int, default=12101, help="item ids are drawn from 1..N")
    rerank.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    rerank.add_argument("--vocab-size", type=int, default=32128,
                        help="backbone vocabulary (T5's 32128 by default; the lm_head cost scales with it)")
    rerank.add_argument("--seed", type=int, default=0)
    rerank.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the model and its tensors live (cuda timings synchronise)")
