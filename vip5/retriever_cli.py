"""`vip5 retriever train|stack|publish`: the learned sequential retriever, from a log to the running system.

    vip5 retriever train --data DIR --out RDIR    P5 folder or review file (+ item content vectors)
                                                  ──► SASRec (softmax over all items, label
                                                  smoothing 0.1, weight average; two
                                                  independent 128-d towers by default)
                                                  ──► RDIR (index.retriever.save_retriever)
    vip5 retriever stack --dirs R1 R2 --out RDIR  independently trained retrievers (e.g. --seed 0 and 1)
                                                  ──► one retriever of all their towers: the mean
                                                  of their scores, published as one
    vip5 retriever publish --dir RDIR             RDIR ──► retriever-vectors + retriever-models (signed
                                                  with VIP5_ADAPTER_SIGNING_KEY when set); every
                                                  streams worker switches to it without a restart

Training uses the same split as `vip5 train` by default (`TrainConfig`: leave-one-out; each user's
validation item is trained on except for a seeded `validate_users` sample, and no test item ever
is), so a replay (`vip5 bench replay --retriever RDIR`) or an offline evaluation of the retriever
sees no test target during training. Item side information (default on) joins each item's ID embedding
(`index.sasrec`): a projection of its image features, or else of the text encoder's vector of its
title and category (`--content`), and learned embeddings of its attributes (`--attributes`); the
exported item vectors include both, so serving is unchanged. The
text vectors take minutes on two cores and are cached (`--content-cache`, by default the output
folder; a `vip5 train --out` of the same data already holds them). The held-out validation users give the retriever's own
next-item HR@10 and recall@100 (`valid` in the output and in RDIR's retriever.json); their
recall@100 after every epoch picks the weights kept and ends training once it stops improving
(`--patience`).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from runtime.cli import add_command, add_kafka_args, kafka_config, topic_config

log = logging.getLogger(__name__)


def train_command(args: argparse.Namespace) -> dict:
    import torch

    from index.retriever import save_retriever
    from index.sasrec import SASRecConfig
    from model_worker.offline.data import DataConfig, load_data, training_split
    from model_worker.offline.retriever import fit_retriever
    from model_worker.offline.train import TrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_data(DataConfig(path=args.data))
    run = TrainConfig(out_dir=args.out)  # the split of `vip5 train`'s default recipe
    split = training_split(data, train_on_valid=not args.strict_split, validate_users=run.validate_users,
                           seed=run.seed)
    config = SASRecConfig(hidden=args.hidden, towers=args.towers, label_smoothing=args.label_smoothing,
                          ema_decay=args.ema_decay,
                          time_budget_s=args.time_budget_s,
                          max_epochs=args.max_epochs, seed=args.seed, patience=args.patience)
    started = time.monotonic()
    content = item_content(data, args.content, Path(args.content_cache or args.out))
    scorer, fitted = fit_retriever(data, split, config, content=content, attributes=args.attributes)
    info = {"data": data.name, "train_on_valid": not args.strict_split, "content": args.content, **fitted}
    version = save_retriever(scorer.model, data.item_keys, args.out, info=info)
    return {"out": args.out, "version": version, "items": data.n_items, "users": len(split.train),
            "train_s": round(time.monotonic() - started, 1), **info}


def item_content(data, content: str, cache: Path):
    """(I+1, C) content vectors for the retriever, or None: the data's image features where it has
    them, else the text encoder's vectors (cached in `cache`)."""
    if content == "none":
        return None
    if data.image_features is not None:
        return data.image_features
    from model_worker.offline.train import text_content_vectors
    from vip5.train_cli import ContentEncoder

    return text_content_vectors(data, cache, ContentEncoder())


def stack_command(args: argparse.Namespace) -> dict:
    from index.retriever import read_meta, save_retriever, stack_retrievers

    model, keys = stack_retrievers(args.dirs)
    parts = [{"dir": d, "version": meta["version"], "valid": meta.get("info", {}).get("valid")}
             for d, meta in ((d, read_meta(d)) for d in args.dirs)]
    version = save_retriever(model, keys, args.out, info={"stacked": parts})
    return {"out": args.out, "version": version, "items": len(keys), "towers": model.config.towers,
            "hidden": model.config.hidden, "stacked": parts}


def publish_command(args: argparse.Namespace) -> dict:
    from index.retriever import publish_retriever
    from runtime.kafka import create_topics, producer
    from runtime.signing import signing_key_from_env

    kafka, topics = kafka_config(args), topic_config(args)
    create_topics(kafka, topics)
    client = producer(kafka)
    try:
        sent = publish_retriever(args.dir, lambda spec, key, value: client.send(topics.name(spec), key=key.encode(),
                                                                               value=value),
                                 signing_key=signing_key_from_env(os.environ))
        client.flush()
    finally:
        client.close()
    return sent


def register(commands, bench) -> None:
    del bench
    group = commands.add_parser("retriever", help="the learned sequential retriever (SASRec): train, stack, publish")
    sub = group.add_subparsers(dest="retriever_command", metavar="ACTION", required=True)
    train = add_command(sub, "train", train_command, "train SASRec on a log and save it as a retriever")
    train.add_argument("--data", required=True, help="P5/VIP5 folder or a reviews_*_5.json.gz file")
    train.add_argument("--out", required=True, help="folder for retriever.safetensors and retriever.json")
    train.add_argument("--time-budget-s", type=float, default=3000.0,
                       help="training stops after the epoch crossing it (or earlier, see --patience)")
    train.add_argument("--max-epochs", type=int, default=200)
    train.add_argument("--hidden", type=int, default=256, help="vector size (all towers together)")
    train.add_argument("--towers", type=int, default=2,
                       help="independent SASRecs side by side, hidden / towers wide each, scores averaged")
    train.add_argument("--label-smoothing", type=float, default=0.1,
                       help="share of each target's probability spread over all items (0: plain softmax "
                       "cross-entropy)")
    train.add_argument("--ema-decay", type=float, default=0.998,
                       help="per-step decay of the weight average that is validated and kept (0: the last "
                       "step's weights)")
    train.add_argument("--patience", type=int, default=5,
                       help="stop after this many epochs without a better validation recall@100 (the best "
                       "epoch's weights are kept)")
    train.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--content", choices=("text", "none"), default="text",
                       help="add each item's content vector (image features, else title and category "
                       "through the text encoder) to its ID embedding; none: IDs only")
    train.add_argument("--attributes", action=argparse.BooleanOptionalAction, default=True,
                       help="add the mean of each item's learned attribute embeddings (categories, brand) to "
                       "its ID embedding")
    train.add_argument("--content-cache", default=None,
                       help="folder with (or for) content_vectors.npy (default: --out; a vip5 train --out of "
                       "the same data has them)")
    train.add_argument("--strict-split", action="store_true",
                       help="train on no validation item (default: all but the validation users', as vip5 train)")
    stack = add_command(sub, "stack", stack_command,
                        "stack independently trained retrievers into one (the mean of their towers' scores)")
    stack.add_argument("--dirs", nargs="+", required=True, help="two or more `vip5 retriever train --out` folders "
                       "of the same data (the same items, towers of the same shape)")
    stack.add_argument("--out", required=True, help="folder for the stacked retriever")
    publish = add_command(sub, "publish", publish_command,
                          "send a trained retriever to the running system (vectors, then the model)")
    add_kafka_args(publish)
    publish.add_argument("--dir", required=True, help="a `vip5 retriever train --out` folder")
