"""`vip5` subcommands of the index package; handlers import torch/faiss lazily.

    vip5 index-embed IMAGE... [--encoder lite0|clip --model M]   vectors' dim, norms and per-image errors
    vip5 index-info SNAPSHOT_DIR                                 what a snapshot holds
    vip5 bench index [--quick] [--dim D] [--sizes N,...]          index and encoder numbers (D = 256 default)
    vip5 bench visual-neighbours --data DIR [--k 10] [--limit N]  precision@k of same label among neighbours
    vip5 bench candidates --data DIR [--users N] [--backward-weight W]   recall@20/50/100 per candidate source, replayed log
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from index.covisitation import CovisitationConfig
from runtime.cli import add_command

log = logging.getLogger(__name__)
FULL_SIZES = (10_000, 100_000, 1_000_000)
BENCH_DIM = 256
DEFAULT_FASHION_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "fashion"


def register(commands, bench) -> None:
    embed = add_command(commands, "index-embed", embed_command, "embed images with the visual encoder")
    embed.add_argument("images", nargs="+", help="image files or file:// URIs")
    _encoder_args(embed)

    info = add_command(commands, "index-info", info_command, "describe an item-index snapshot")
    info.add_argument("snapshot", help="snapshot root folder (holds CURRENT)")

    index = add_command(bench, "index", bench_index_command, "item index: add rate, latency, recall@100, memory")
    index.add_argument("--quick", action="store_true", help=f"only the smallest size ({FULL_SIZES[0]:,})")
    index.add_argument("--sizes", type=_int_list, default=FULL_SIZES, help="comma-separated catalogue sizes")
    index.add_argument("--dim", type=int, default=BENCH_DIM, help="vector dimension")
    index.add_argument("--distribution", choices=("clustered", "uniform"), default="clustered")
    index.add_argument("--images", type=Path, default=DEFAULT_FASHION_DIR,
                       help="folder with products.csv + images/ for the encoder images/s")
    index.add_argument("--skip-encoder", action="store_true", help="leave out the encoder images/s")
    index.add_argument("--threads", type=int, default=None, help="CPU threads for the encoder (torch)")
    index.add_argument("--faiss-threads", type=int, default=1,
                       help="OpenMP threads for faiss (process-wide); 1, as the streams worker searches, "
                       "avoids spin-wait stalls on a busy host; 0: faiss's default (all cores)")

    neighbours = add_command(bench, "visual-neighbours", neighbours_command,
                             "precision@k of same article type among visual neighbours")
    neighbours.add_argument("--data", type=Path, required=True, help="folder with products.csv + images/")
    neighbours.add_argument("--k", type=int, default=10)
    neighbours.add_argument("--limit", type=int, default=None, help="first N products only")
    _encoder_args(neighbours)

    candidates = add_command(bench, "candidates", candidates_command,
                             "candidate recall@20/50/100 per source and merged, on a replayed P5-layout log")
    candidates.add_argument("--data", type=Path, required=True, help="folder with sequential_data.txt")
    candidates.add_argument("--users", type=int, default=5000, help="seeded sample of test users")
    candidates.add_argument("--seed", type=int, default=0, help="user interleaving and test-user sample")
    candidates.add_argument("--backward-weight", type=float, default=CovisitationConfig.backward_weight,
                            help="co-visitation: weight of a pair read from the later item back to the earlier")


def _encoder_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder", choices=("lite0", "clip"), default="lite0")
    parser.add_argument("--model", default=None, help="clip: hub name or local folder; lite0: .pth path")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for the encoder (torch)")


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(part.replace("_", "")) for part in text.split(",") if part)


def _encoder(args: argparse.Namespace):
    from index.encoders import EncoderConfig, build_encoder

    return build_encoder(EncoderConfig(kind=args.encoder, model=args.model, image_size=args.image_size,
                                       device=args.device, num_threads=args.threads))


def embed_command(args: argparse.Namespace) -> dict:
    from index.images import operator_path

    encoder = _encoder(args)
    result = encoder.embed([operator_path(s) for s in args.images])
    items = [{"image": str(src), "ok": err is None, "error": None if err is None else str(err)}
             for src, err in zip(args.images, result.errors, strict=True)]
    failed = sum(not item["ok"] for item in items)
    return {"encoder_id": encoder.encoder_id, "dim": encoder.dim, "images": items, "exit_status": int(failed > 0)}


def info_command(args: argparse.Namespace) -> dict:
    from index.item_index import ItemIndex

    index = ItemIndex.restore(args.snapshot)
    return {"snapshot": args.snapshot, **index.stats(), "config": vars(index.config)}


def bench_index_command(args: argparse.Namespace) -> dict:
    from index.bench import bench_encoder, bench_index, labelled_images

    sizes = args.sizes[:1] if args.quick else args.sizes
    if args.faiss_threads:
        from index.faiss_backend import set_threads

        set_threads(args.faiss_threads)
    result = bench_index(sizes, args.dim, distribution=args.distribution)
    result["faiss_threads"] = _faiss_threads()
    if not args.skip_encoder:
        from index.encoders import EncoderConfig, build_encoder

        paths, _ = labelled_images(args.images)
        encoder = build_encoder(EncoderConfig(num_threads=args.threads))
        result["encoder"] = {**bench_encoder(paths, (1, 64), encoder=encoder), "threads": _torch_threads()}
    return result


def _faiss_threads() -> int:
    from index.faiss_backend import faiss_module

    return faiss_module().omp_get_max_threads()


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def neighbours_command(args: argparse.Namespace) -> dict:
    from index.bench import visual_neighbour_precision

    return visual_neighbour_precision(args.data, k=args.k, limit=args.limit, encoder=_encoder(args))


def candidates_command(args: argparse.Namespace) -> dict:
    from index.candidate_recall import RecallBenchConfig, candidate_recall, read_sequences

    config = RecallBenchConfig(users=args.users, seed=args.seed,
                               covisitation=CovisitationConfig(backward_weight=args.backward_weight))
    result = candidate_recall(read_sequences(args.data), config)
    return {"data": str(args.data), **result}
