"""`vip5 retriever train|publish`: the learned sequential retriever, from a log to the running system.

    vip5 retriever train --data DIR --out RDIR    P5 folder or review file ──► SASRec (softmax over
                                                  all items) ──► RDIR (index.retriever.save_retriever)
    vip5 retriever publish --dir RDIR             RDIR ──► retriever-vectors + retriever-models; every
                                                  streams worker switches to it without a restart

Training uses the same split as `vip5 train` and `vip5 evaluate` (leave-one-out: each user's last
two items are never trained on), so a replay (`vip5 bench replay --retriever RDIR`) or an offline
evaluation of the retriever sees no target during training.
"""

from __future__ import annotations

import argparse
import logging
import time

from runtime.cli import add_command, add_kafka_args, kafka_config, topic_config

log = logging.getLogger(__name__)


def train_command(args: argparse.Namespace) -> dict:
    import torch

    from index.retriever import save_retriever
    from index.sasrec import SASRecConfig, SASRecScorer
    from model_worker.offline.data import DataConfig, load_data, training_split

    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_data(DataConfig(path=args.data))
    split = training_split(data)
    config = SASRecConfig(hidden=args.hidden, time_budget_s=args.time_budget_s, max_epochs=args.max_epochs,
                          seed=args.seed)
    started = time.monotonic()
    scorer = SASRecScorer(split.train, data.n_items, config)
    version = save_retriever(scorer.model, data.item_keys, args.out, info={"data": data.name, **scorer.info()})
    return {"out": args.out, "version": version, "items": data.n_items, "users": len(split.train),
            "train_s": round(time.monotonic() - started, 1), **scorer.info()}


def publish_command(args: argparse.Namespace) -> dict:
    from index.retriever import publish_retriever
    from runtime.kafka import create_topics, producer

    kafka, topics = kafka_config(args), topic_config(args)
    create_topics(kafka, topics)
    client = producer(kafka)
    try:
        sent = publish_retriever(args.dir, lambda spec, key, value: client.send(topics.name(spec), key=key.encode(),
                                                                               value=value))
        client.flush()
    finally:
        client.close()
    return sent


def register(commands, bench) -> None:
    del bench
    group = commands.add_parser("retriever", help="the learned sequential retriever (SASRec): train, publish")
    sub = group.add_subparsers(dest="retriever_command", metavar="ACTION", required=True)
    train = add_command(sub, "train", train_command, "train SASRec on a log and save it as a retriever")
    train.add_argument("--data", required=True, help="P5/VIP5 folder or a reviews_*_5.json.gz file")
    train.add_argument("--out", required=True, help="folder for retriever.safetensors and retriever.json")
    train.add_argument("--time-budget-s", type=float, default=600.0, help="training stops after the epoch crossing it")
    train.add_argument("--max-epochs", type=int, default=200)
    train.add_argument("--hidden", type=int, default=64, help="vector size")
    train.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    train.add_argument("--seed", type=int, default=0)
    publish = add_command(sub, "publish", publish_command,
                          "send a trained retriever to the running system (vectors, then the model)")
    add_kafka_args(publish)
    publish.add_argument("--dir", required=True, help="a `vip5 retriever train --out` folder")
