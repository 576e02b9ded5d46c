"""`vip5 serve`: run a model worker (flags override VIP5_* environment variables)."""

from __future__ import annotations

import argparse
import os

from runtime.cli import add_command, add_kafka_args, add_metrics_args, kafka_config, topic_config


def run_serve(args: argparse.Namespace) -> dict:
    from model_worker.ranker import RankerConfig
    from model_worker.serve import ServeConfig
    from model_worker.worker import run_model_worker

    model_dir = args.model_dir or os.environ.get("VIP5_MODEL_DIR")
    if not model_dir:
        raise SystemExit("vip5 serve: give --model-dir or set VIP5_MODEL_DIR")
    from runtime.signing import signing_key_from_env

    topics = topic_config(args)
    serve_cfg = ServeConfig(kafka=kafka_config(args), topics=topics,
                            artifacts_dir=args.artifacts_dir or os.environ.get("VIP5_ARTIFACT_DIR", "artifacts"),
                            adapter_signing_key=signing_key_from_env(os.environ),
                            group_id=args.group_id or f"{topics.prefix}model-worker",
                            max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, top_n=args.top_n,
                            explain_top=args.explain, max_buffered=args.max_buffered)
    from model_worker.rerank import RerankConfig

    ranker_cfg = RankerConfig(model_dir=model_dir, device=args.device,
                              rerank=RerankConfig(history_len=args.prompt_history_len, catalogue_k=args.catalogue_k,
                                                  **_given(retrieval_weight=args.retrieval_weight)))
    stats = run_model_worker(serve_cfg, ranker_cfg, metrics_port=args.metrics_port, metrics_host=args.metrics_host)
    return {"stats": stats} if args.json else {}


def _given(**values) -> dict:
    """The options given on the command line; the rest keep their config's default."""
    return {name: value for name, value in values.items() if value is not None}


def register(commands, bench) -> None:
    p = add_command(commands, "serve", run_serve, "run a model worker: re-rank requests -> recommendations")
    add_kafka_args(p)
    p.add_argument("--model-dir", default=None, help="VIP5 model directory (env VIP5_MODEL_DIR)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--artifacts-dir", default=None,
                   help="adapter artifact store; updates load only from <dir>/<version> (env VIP5_ARTIFACT_DIR, "
                        "default artifacts); the signing key comes from VIP5_ADAPTER_SIGNING_KEY(_FILE)")
    p.add_argument("--group-id", default=None,
                   help="consumer group of the model workers (default: <topic prefix>model-worker)")
    p.add_argument("--max-batch", type=int, default=16, help="requests scored together")
    p.add_argument("--max-wait-ms", type=int, default=0,
                   help="longest wait for a batch to fill (0: start as soon as the scorer is free)")
    p.add_argument("--max-buffered", type=int, default=None,
                   help="requests held in memory (buffered + being scored); at this many the worker pauses "
                        "its partitions and keeps polling, and resumes at half (default: 4 x --max-batch)")
    p.add_argument("--top-n", type=int, default=10, help="items per recommendation")
    p.add_argument("--explain", action="store_true",
                   help="after each batch's recommendations, publish a generated explanation of each one's "
                        "top item on the explanations topic")
    add_metrics_args(p)
    p.add_argument("--prompt-history-len", type=int, default=20, help="latest history items written into the prompt")
    p.add_argument("--catalogue-k", type=int, default=0,
                   help="item-token models: their best K catalogue items join each request's candidates (0: off)")
    p.add_argument("--retrieval-weight", type=float, default=None,
                   help="weight of the learned retriever's affinity (Candidate.affinity) added to the model's "
                        "log-likelihood; 0: the model alone (default: RerankConfig.retrieval_weight)")
