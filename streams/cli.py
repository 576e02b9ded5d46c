"""`vip5 streams`: run the faust streams worker (flags override VIP5_* environment variables)."""

from __future__ import annotations

import argparse

from runtime.cli import add_command, add_kafka_args, add_metrics_args, kafka_config, topic_config


def candidate_config(k: int, slots: str | None, **settings):
    """`--slots covisit=30,sequential=40,...` (reserved slots per source, visual gets the rest), or
    each source's default share scaled to k; `settings`: other `CandidateConfig` fields."""
    import dataclasses

    from index.candidates import RESERVED, CandidateConfig

    if not slots:
        return dataclasses.replace(CandidateConfig.sized(k), **settings)
    reserved = dict.fromkeys(RESERVED, 0)
    for part in slots.split(","):
        name, _, count = (p.strip() for p in part.partition("="))
        if name not in RESERVED or not count.isdigit():
            raise ValueError(f"--slots: {part!r} is not SOURCE=COUNT with SOURCE one of {', '.join(RESERVED)}")
        reserved[name] = int(count)
    return CandidateConfig(k=k, **settings, **{f"{name}_k": n for name, n in reserved.items()})


def streams_config(args: argparse.Namespace):
    import os

    from index.encoders import EncoderConfig
    from index.images import ImageLimits
    from runtime.signing import signing_key_from_env
    from streams.config import StreamsConfig

    image_dir = args.image_dir or os.environ.get("VIP5_IMAGE_DIR") or None

    return StreamsConfig(
        kafka=kafka_config(args),
        topics=topic_config(args),
        encoder=EncoderConfig(kind=args.encoder, model=args.encoder_model, image_size=args.image_size,
                              device=args.device,
                              limits=ImageLimits(base_dir=os.path.abspath(image_dir) if image_dir else None)),
        # slots a source cannot fill go to the others
        candidates=candidate_config(args.candidates, args.slots,
                                    covisit_fusion=None if args.covisit_fusion < 0 else args.covisit_fusion,
                                    content_cold_only=args.content_cold_only),
        app_id=args.app_id or f"{topic_config(args).prefix}streams",
        data_dir=args.data_dir,
        history_len=args.history_len,
        max_users=args.max_users,
        user_idle_s=args.user_idle_s,
        coalesce_ms=args.coalesce_ms,
        faiss_threads=args.faiss_threads,
        text_encoder=args.text_encoder,
        retriever=not args.no_retriever,
        signing_key=signing_key_from_env(os.environ),
        one_record_per_batch=not args.batched_changelog,
    )


def run_streams(args: argparse.Namespace) -> dict:
    from streams.worker import run_worker

    run_worker(streams_config(args), loglevel="debug" if args.verbose else "info", log_format=args.log_format,
               metrics_port=args.metrics_port,
               metrics_host=args.metrics_host)
    return {}


def register(commands, bench) -> None:
    p = add_command(commands, "streams", run_streams,
                    "run the streams worker: items -> embeddings, interactions -> re-rank requests")
    add_kafka_args(p)
    p.add_argument("--app-id", default=None,
                   help="faust app id: consumer group and table topic names (default: <topic prefix>streams)")
    p.add_argument("--data-dir", default="runs/streams", help="faust working directory")
    p.add_argument("--encoder", default="lite0", choices=("lite0", "clip"), help="visual encoder")
    p.add_argument("--encoder-model", default=None, help="CLIP hub name or local folder; lite0 weights path")
    p.add_argument("--image-size", type=int, default=224, help="lite0 input side in pixels")
    p.add_argument("--text-encoder", default="minilm", choices=("minilm", "none"),
                   help="content vector of title + category for items without an image (default minilm, 384-d)")
    p.add_argument("--image-dir", default=None,
                   help="the only directory an item's image_uri may name a file in (env VIP5_IMAGE_DIR; "
                        "default: none, items must carry image_bytes)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--candidates", type=int, default=100, help="candidates per re-rank request")
    p.add_argument("--slots", default=None, metavar="SOURCE=N,...",
                   help="reserved candidate slots per source, e.g. covisit=30,sequential=40,popular=10,fresh=10 "
                   "(unnamed sources 0; visual gets the rest of --candidates); default: the CandidateConfig "
                   "shares scaled to --candidates")
    p.add_argument("--covisit-fusion", type=float, default=1.0, metavar="W",
                   help="with a retriever, co-visited and retrieved items share their slots by affinity + W x "
                   "ln(1 + co-visitation weight); negative: each source keeps its own slots")
    p.add_argument("--content-cold-only", action=argparse.BooleanOptionalAction, default=True,
                   help="with a retriever, content neighbours and fresh items are only the items it has no vector "
                   "for (newer than it); their unused slots join the behavioural ranking")
    p.add_argument("--no-retriever", action="store_true",
                   help="do not follow the learned retriever's topics (`vip5 retriever publish`)")
    p.add_argument("--history-len", type=int, default=50, help="items kept per user")
    p.add_argument("--max-users", type=int, default=20_000,
                   help="most users whose history this worker keeps; the least recently active is evicted first")
    p.add_argument("--user-idle-s", type=float, default=30 * 86400.0,
                   help="drop a user's history after this many seconds without an interaction (0: never)")
    p.add_argument("--coalesce-ms", type=int, default=5,
                   help="take the interactions arriving within this window together; a user's become one "
                   "request (0: one event at a time)")
    p.add_argument("--faiss-threads", type=int, default=1,
                   help="OpenMP threads for faiss searches (one query at a time: 1 is fastest)")
    add_metrics_args(p)
    p.add_argument("--batched-changelog", action="store_true",
                   help="batch table changelog writes (faster; only correct on Apache Kafka, not on Tansu)")
