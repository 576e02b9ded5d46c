"""`vip5 train` and `vip5 evaluate`: wiring only; the work lives in model_worker.offline.train /
model_worker.offline.evaluate, and item content vectors come from index.text_encoder (this module
sits above both packages). Heavy imports happen inside the handlers."""

from __future__ import annotations

import argparse

from runtime.cli import add_command


def _data_args(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--data", required=required, default=None,
                        help="P5/VIP5 folder (sequential_data.txt, datamaps.json, ...) or a reviews_*_5.json.gz file")
    parser.add_argument("--numbering", choices=("random", "original"), default=None,
                        help="item ids: seeded random re-indexing (leak-free; the default) or the file's "
                        "numbering; evaluate defaults to the trained run's")
    parser.add_argument("--reindex-seed", type=int, default=None, help="seed of the random numbering (2023)")
    parser.add_argument("--core", type=int, default=5, help="k-core filter for raw review files")
    parser.add_argument("--image-features", default=None,
                        help="per-item image features .npy (row ids in <stem>_ids.txt beside it)")


def _data_config(args, trained=None):
    """Data options from the command line; unset numbering options follow `trained` (the run's
    DataConfig) when given, else the defaults (random numbering, seed 2023)."""
    from model_worker.offline.data import DataConfig

    numbering = args.numbering or (trained.numbering if trained else "random")
    seed = args.reindex_seed if args.reindex_seed is not None else (trained.reindex_seed if trained else 2023)
    return DataConfig(path=args.data, numbering=numbering, reindex_seed=seed, core=args.core,
                      image_features=args.image_features)


def train_command(args: argparse.Namespace) -> dict:
    from pathlib import Path

    from model_worker.offline.tasks import TaskConfig
    from model_worker.offline.train import TrainConfig, read_run_config, train

    stages = None if args.stages is None else tuple(s.strip() for s in args.stages.split(",") if s.strip())
    config = TrainConfig(
        out_dir=args.out, preset=args.preset, backbone=args.backbone, stages=stages, pretrain_steps=args.pretrain_steps,
        adapt_steps=args.adapt_steps, batch_size=args.batch_size, warmup_fraction=args.warmup,
        grad_clip=args.grad_clip, time_budget_s=args.time_budget_s, checkpoint_every=args.checkpoint_every,
        threads=args.threads, seed=args.seed, item_ids=args.item_ids, content=args.content,
        max_len=args.max_len, validate_every_s=args.validate_every_s, cold_items_share=args.cold_items_share,
        freeze_item_ids=args.freeze_item_ids,
        **{name: value for name, value in (("dropout_rate", args.dropout), ("weight_decay", args.weight_decay),
                                           ("item_init", args.item_init), ("retriever_share", args.retriever_share),
                                           ("lr", args.lr))
           if value is not None},
        model_overrides={} if args.content_loss_weight is None else {"content_loss_weight": args.content_loss_weight},
    )
    tasks = TaskConfig(history_len=args.history_len, train_candidates=args.train_candidates,
                       family_weights=tuple(float(w) for w in args.family_weights.split(",")))
    if args.data is not None:
        data = _data_config(args)
    elif args.resume and (Path(args.out) / "train_config.json").exists():
        data, tasks, _ = read_run_config(Path(args.out))
    else:
        raise SystemExit("vip5 train: --data is required unless --resume finds a run in --out")
    encoder = ContentEncoder() if config.item_ids == "tokens" and config.content == "text" else None
    return train(data, tasks, config, resume=args.resume, content_encoder=encoder)


class ContentEncoder:
    """The text encoder with the item-text recipe the live system uses (`index.text_encoder`),
    loaded on first use (a run whose content vectors are cached never loads it)."""

    def __init__(self):
        from index.text_encoder import item_text

        self.item_text = item_text
        self._encoder = None

    @property
    def encoder(self):
        if self._encoder is None:
            from index.text_encoder import TextEncoder

            self._encoder = TextEncoder()
        return self._encoder

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def encode(self, texts):
        return self.encoder.encode(texts)


def evaluate_command(args: argparse.Namespace) -> dict:
    from pathlib import Path

    from index.sasrec import SASRecConfig
    from model_worker.offline.evaluate import EvalConfig, evaluate

    baselines = tuple(b.strip() for b in args.baselines.split(",") if b.strip())
    config = EvalConfig(
        split=args.split, max_users=args.max_users or None, held_out_max_users=args.held_out_max_users or None,
        sample_seed=args.seed, method=args.method,
        num_beams=args.beams, direct_negatives=args.direct_negatives, history_len=args.history_len, batch_size=args.batch_size,
        exclude_history=not args.keep_history_items, baselines=baselines,
        sasrec=SASRecConfig(max_epochs=args.sasrec_epochs, time_budget_s=args.sasrec_time_s),
        rerank_candidates=args.rerank_candidates, retriever=args.retriever,
        max_explanations=args.max_explanations or None, threads=args.threads,
    )
    data = None
    if args.data:
        trained = None
        if args.model_dir:
            from model_worker.offline.evaluate import trained_data_config

            trained = trained_data_config(Path(args.model_dir))
        data = _data_config(args, trained)
    return evaluate(config, model_dir=args.model_dir, data_config=data)


def register(commands, bench) -> None:
    del bench
    train = add_command(commands, "train", train_command,
                        help="offline training: a preset backbone from scratch then adapters, or adapters "
                        "on a pretrained T5 (--backbone)")
    _data_args(train, required=False)
    train.add_argument("--out", required=True, help="run directory (checkpoints, final model, configs)")
    backbone = train.add_mutually_exclusive_group()
    backbone.add_argument("--preset", default="mini",
                          help="backbone preset with random weights: mini, tiny, small, t5-small, t5-base")
    backbone.add_argument("--backbone", default=None, metavar="NAME_OR_PATH",
                          help="pretrained T5: hub name (google-t5/t5-small: cached weights or hub access) or "
                          "local folder with weights and tokenizer; frozen, only the adapter stage runs by default")
    train.add_argument("--item-ids", choices=("tokens", "digits"), default="tokens",
                       help="one token per item + content vector (default) or the paper's digit-piece ids")
    train.add_argument("--content", choices=("text", "none"), default="text",
                       help="item content vectors from the text encoder where the data has no image features")
    train.add_argument("--item-init", choices=("random", "retriever"), default=None,
                       help="retriever (the default for item tokens): fit the learned sequential retriever first "
                       "(--retriever-share of the budget), start the item tokens from its item vectors and save it "
                       "in <out>/retriever; random: item ids start random (the default for digit ids)")
    train.add_argument("--retriever-share", type=float, default=None,
                       help="share of --time-budget-s the retriever fit may take (default: TrainConfig.retriever_share)")
    train.add_argument("--freeze-item-ids", action="store_true",
                       help="item tokens keep the id embeddings they start from (the rest still trains)")
    train.add_argument("--max-len", type=int, default=50, help="training items per sequence (item tokens)")
    train.add_argument("--validate-every-s", type=float, default=300.0,
                       help="validation HR@10 this often; the best model is kept (item tokens)")
    train.add_argument("--cold-items-share", type=float, default=0.0,
                       help="seeded share of items held out of training (cold-start measurement)")
    train.add_argument("--stages", default=None,
                       help="comma-separated, in order (default: pretrain,adapt for a preset, adapt for --backbone)")
    train.add_argument("--pretrain-steps", type=int, default=12000)
    train.add_argument("--adapt-steps", type=int, default=600)
    train.add_argument("--batch-size", type=int, default=128, help="sequences (tokens) or prompts (digits) per step")
    train.add_argument("--lr", type=float, default=None,
                       help="peak learning rate (default: 1e-3 from the retriever's item vectors, 3e-3 from random)")
    train.add_argument("--warmup", type=float, default=0.05, help="warmup share of each stage's steps")
    train.add_argument("--grad-clip", type=float, default=1.0)
    train.add_argument("--dropout", type=float, default=None,
                       help="backbone dropout (default: TrainConfig.dropout_rate)")
    train.add_argument("--weight-decay", type=float, default=None,
                       help="AdamW weight decay of weight matrices (default: TrainConfig.weight_decay)")
    train.add_argument("--content-loss-weight", type=float, default=None,
                       help="item tokens: weight of the content-only loss that sharpens the content tokens of "
                       "items arriving after training (default: VIP5Config.content_loss_weight, 0)")
    train.add_argument("--time-budget-s", type=float, default=None,
                       help="wall-clock limit of the run, split across stages in proportion to their steps")
    train.add_argument("--checkpoint-every", type=int, default=200)
    train.add_argument("--history-len", type=int, default=20, help="most recent items written into a prompt")
    train.add_argument("--family-weights", default="1,1,1",
                       help="digit ids: sampling weights of the sequential, direct and explanation prompts")
    train.add_argument("--train-candidates", type=int, default=99,
                       help="negatives in a training candidate list (the paper: 99)")
    train.add_argument("--threads", type=int, default=2)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint")

    evaluate = add_command(commands, "evaluate", evaluate_command,
                           help="sequential, direct and explanation metrics of a trained run next to baselines")
    _data_args(evaluate, required=False)
    evaluate.add_argument("--model-dir", default=None, help="run directory from `vip5 train` (or its model/)")
    evaluate.add_argument("--split", choices=("test", "valid"), default="test")
    evaluate.add_argument("--max-users", type=int, default=1000, help="seeded sample of users; 0 = all")
    evaluate.add_argument("--held-out-max-users", type=int, default=0,
                          help="held-out templates use the first N users of the sample; 0 = all of it")
    evaluate.add_argument("--seed", type=int, default=0, help="user sample and tie-breaking")
    evaluate.add_argument("--method", choices=("exact", "topk", "beam"), default="exact",
                          help="exact likelihood of every item id; the exact 10 most likely ids by best-first "
                          "trie search (same metrics, usually much faster); or constrained beam search")
    evaluate.add_argument("--beams", type=int, default=20)
    evaluate.add_argument("--direct-negatives", type=int, default=99, help="negatives per direct candidate list")
    evaluate.add_argument("--history-len", type=int, default=20)
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--keep-history-items", action="store_true",
                          help="do not rank items already in the history last")
    evaluate.add_argument("--baselines", default="popularity,markov,sasrec,next_id")
    evaluate.add_argument("--sasrec-epochs", type=int, default=200)
    evaluate.add_argument("--sasrec-time-s", type=float, default=300.0, help="SASRec training time limit")
    evaluate.add_argument("--rerank-candidates", type=int, default=100,
                          help="candidates per user from the co-visitation generator for the rerank metrics")
    evaluate.add_argument("--retriever", default=None, metavar="RDIR",
                          help="a `vip5 retriever train` folder: its items join the re-rank candidates, merged "
                          "as the streams worker merges them (compare with `vip5 bench replay --retriever`)")
    evaluate.add_argument("--max-explanations", type=int, default=500, help="seeded sample; 0 = all")
    evaluate.add_argument("--threads", type=int, default=2)
