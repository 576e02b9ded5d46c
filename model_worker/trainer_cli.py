"""`vip5 trainer` (the incremental adapter trainer) and `vip5 adapters list|rollback`."""

from __future__ import annotations

import argparse
import os

from runtime.cli import add_command, add_kafka_args, add_metrics_args, kafka_config, topic_config


def _artifacts_dir(args: argparse.Namespace) -> str:
    return args.artifacts_dir or os.environ.get("VIP5_ARTIFACT_DIR", "artifacts")


def trainer_config(args: argparse.Namespace):
    from model_worker.trainer import TrainerConfig
    from model_worker.tuning import TuneConfig
    from runtime.signing import signing_key_from_env

    model_dir = args.model_dir or os.environ.get("VIP5_MODEL_DIR")
    if not model_dir:
        raise SystemExit("vip5 trainer: give --model-dir or set VIP5_MODEL_DIR")
    topics = topic_config(args)
    return TrainerConfig(model_dir=model_dir, artifacts_dir=_artifacts_dir(args), kafka=kafka_config(args),
                         topics=topics, group_id=f"{topics.prefix}adapter-trainer",
                         adapter_signing_key=signing_key_from_env(os.environ),
                         every_events=args.every_events, every_s=args.every_s,
                         min_events=args.min_events, max_regression=args.max_regression,
                         max_users=args.max_users, max_fresh_examples=args.max_fresh_examples,
                         tune=TuneConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=5))


def run_trainer_command(args: argparse.Namespace) -> dict:
    import signal
    import threading

    from model_worker.trainer import run_trainer

    cfg = trainer_config(args)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    result = run_trainer(cfg, stop, metrics_port=args.metrics_port, metrics_host=args.metrics_host)
    return result if args.json else {}


def run_adapters_list(args: argparse.Namespace) -> dict:
    from model_worker.artifacts import ArtifactStore

    result = {"artifacts_dir": _artifacts_dir(args), "versions": ArtifactStore(_artifacts_dir(args)).manifests()}
    if args.bootstrap or os.environ.get("VIP5_KAFKA_BOOTSTRAP_SERVERS"):
        from model_worker.trainer import latest_update

        latest = latest_update(kafka_config(args), topic_config(args))
        result["serving"] = latest.version if latest else None
    return result


def run_adapters_rollback(args: argparse.Namespace) -> dict:
    from model_worker.artifacts import ArtifactStore
    from model_worker.trainer import latest_update
    from runtime.kafka import producer
    from schemas.codec import encode
    from schemas.topics import ADAPTER_UPDATES

    kafka, topics = kafka_config(args), topic_config(args)
    latest = latest_update(kafka, topics)
    update = ArtifactStore(_artifacts_dir(args)).update_for(args.version,
                                                            parent_version=latest.version if latest else None)
    client = producer(kafka)
    client.send(topics.name(ADAPTER_UPDATES), key=b"adapter", value=encode(update)).get(timeout=30)
    client.close()
    return {"rolled_back_to": update.version, "from": latest.version if latest else None, "sha256": update.sha256}


def register(commands, bench) -> None:
    p = add_command(commands, "trainer", run_trainer_command,
                    "run the incremental adapter trainer: interactions -> accepted adapter versions")
    add_kafka_args(p)
    p.add_argument("--model-dir", default=None, help="VIP5 model directory (env VIP5_MODEL_DIR)")
    p.add_argument("--artifacts-dir", default=None, help="artifact store (env VIP5_ARTIFACT_DIR, default artifacts)")
    p.add_argument("--every-events", type=int, default=500, help="a round after this many fresh events")
    p.add_argument("--every-s", type=float, default=300.0, help="or after this many seconds")
    p.add_argument("--min-events", type=int, default=50, help="fewest fresh events for a timed round")
    p.add_argument("--steps", type=int, default=50, help="adapter tuning steps per round")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-regression", type=float, default=0.0,
                   help="accept a candidate whose held-out MRR is at most this much below the current one")
    p.add_argument("--max-users", type=int, default=50_000,
                   help="most users whose history the trainer keeps; the least recently active is forgotten first")
    p.add_argument("--max-fresh-examples", type=int, default=20_000,
                   help="most examples waiting for a round; the oldest are dropped first")
    add_metrics_args(p)

    adapters = commands.add_parser("adapters", help="list adapter versions, or roll back to one")
    sub = adapters.add_subparsers(dest="adapters_command", metavar="ACTION", required=True)
    listing = add_command(sub, "list", run_adapters_list, "versions in the artifact store (and the one serving)")
    add_kafka_args(listing)
    listing.add_argument("--artifacts-dir", default=None)
    rollback = add_command(sub, "rollback", run_adapters_rollback,
                           "publish an update that points every model worker at an earlier version")
    add_kafka_args(rollback)
    rollback.add_argument("version")
    rollback.add_argument("--artifacts-dir", default=None)
