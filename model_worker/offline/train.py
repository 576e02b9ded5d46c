"""Offline two-stage training of VIP5 on multitask prompts.

In:  a `DataConfig` (dataset, item numbering), a `TaskConfig` (prompt sampling), a `TrainConfig`.
Out: under `out_dir`:
  train_config.json    every config of the run (data, tasks, training), and with a pretrained
                       backbone its "backbone_origin": {name, sha256 of its weights}
  tokenizer/           the tokenizer built from templates + training explanations (preset backbones)
  pretrained/          model directory after stage "pretrain" (the frozen backbone of stage "adapt")
  checkpoint/          the latest checkpoint: state.json (stage, step, elapsed, losses) +
                       optimizer.pt + the trainable weights: model/ (stage "pretrain": everything
                       trains) or adapter/ (stage "adapt": adapter artifact only)
  model/               the final model directory; `vip5_config.json` lists the stages that ran
  adapter/             the final adapter artifact (when stage "adapt" ran)

Stages, as P5 then VIP5: "pretrain" trains the randomly initialised preset backbone fully; "adapt"
freezes it and trains adapters, the image mapping network and layer norms. A pretrained backbone
(`backbone`: hub name or local folder, with its own SentencePiece tokenizer) runs "adapt" alone
by default, the paper's setting; "pretrain" runs on it only when asked for.

Each stage: AdamW, linear warmup then linear decay, gradient clipping. A stage ends after its steps
or its share of `time_budget_s` (split in proportion to steps), whichever comes first; the
learning rate decays on whichever of the two is further along, so a run cut by time still ends at
a small learning rate. Resume continues from `checkpoint/` at the recorded stage and
step (prompt sampling is seeded per step, so a resumed run draws the same batches).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from model_worker.training import lr_factor, make_optimizer, train_step
from model_worker.vip5model.config import PRESETS, STAGES, VIP5Config

from .data import SPLIT_FIELDS, DataConfig, LeaveOneOut, RecData, load_data, training_split, validation_users
from .runs import RETRIEVER_DIR
from .tasks import SequenceSampler, TaskConfig, TrainingSampler, image_lookup, tokenizer_corpus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """out_dir: where everything is written; preset: backbone preset (random weights; ignored when
    `backbone` is set); backbone: hub name or local folder of a pretrained T5 (weights + tokenizer),
    None for the preset; stages: which stages run, in order (None: "pretrain" then "adapt" for a
    preset, "adapt" alone for a pretrained backbone, which must not forget what it knows);
    pretrain_steps/adapt_steps: optimizer steps per stage; batch_size: prompts per step;
    lr: peak learning rate (both stages; None: 1e-3, the paper's, when the item tokens start from
    the retriever, which a larger rate erodes, and 3e-3 from random weights); warmup_fraction: share of a stage's
    steps spent warming up; weight_decay: AdamW; grad_clip: max gradient norm; time_budget_s:
    wall-clock limit of the whole run (None: steps only); checkpoint_every: steps between
    checkpoints; log_every: steps per recorded mean loss; dropout_rate: backbone dropout (0.1; 0.3 and 0.5 learned
    too slowly for an hour here: Toys validation HR@10 0.0745 and 0.0435 after 15 minutes,
    against 0.083 at 0.1); tokenizer_vocab: size of the built tokenizer;
    threads: torch CPU threads; seed: model init and sampling.
    item_ids: "tokens" (the default recipe: one token per item plus its content vector, every
    position of a training sequence a target, softmax over all items) or "digits" (the paper's
    digit-piece ids with multitask prompts); content: "text" (item texts through the text encoder
    where the data has no image features) or "none"; max_len: training items per sequence (tokens);
    validate_every_s / validate_users: next-item HR@10 on a seeded sample of validation users every
    so often, keeping the best model (tokens); cold_items_share: a seeded share of items removed from
    every training sequence, to measure how items that arrive after training are served;
    train_on_valid: training sequences also end with the validation item of every user but the
    `validate_users` validation users (the test item is never trained on; the baselines of
    `vip5 evaluate` are fitted on the same sequences);
    item_init: "retriever" (the default for item tokens): first fit the learned sequential
    retriever (SASRec with d_model-sized vectors, `model_worker.offline.retriever`) for
    `retriever_share` of the time budget (of 2,400 s without one), save it in `<out_dir>/retriever/`
    and start every item's id embedding from its item vector (collaborative item tokens); the
    stages share what is left. "random" (the default for digit ids): item ids start random.
    freeze_item_ids: item tokens keep their id embeddings as they start (the content part, the
    mapping and the rest of the model still train)."""

    out_dir: str
    preset: str = "mini"
    backbone: str | None = None
    stages: tuple[str, ...] | None = None  # a tuple after construction
    pretrain_steps: int = 12000
    adapt_steps: int = 600
    batch_size: int = 128
    lr: float | None = None  # a number after construction
    warmup_fraction: float = 0.05
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    time_budget_s: float | None = None
    checkpoint_every: int = 200
    log_every: int = 25
    dropout_rate: float = 0.1
    tokenizer_vocab: int = 4000
    threads: int = 2
    seed: int = 0
    model_overrides: dict = field(default_factory=dict)
    item_ids: str = "tokens"
    content: str = "text"
    max_len: int = 50
    validate_every_s: float = 300.0
    validate_users: int = 2000
    cold_items_share: float = 0.0
    train_on_valid: bool = True
    item_init: str | None = None  # "retriever" for item tokens, "random" for digit ids, after construction
    retriever_share: float = 0.25
    freeze_item_ids: bool = False

    def __post_init__(self) -> None:
        if self.item_init is None:
            object.__setattr__(self, "item_init", "retriever" if self.item_ids == "tokens" else "random")
        if self.item_init not in ("random", "retriever"):
            raise ValueError(f"TrainConfig.item_init must be 'random' or 'retriever', got {self.item_init!r}")
        if self.item_init == "retriever" and self.item_ids != "tokens":
            raise ValueError("TrainConfig.item_init='retriever' needs item_ids='tokens'")
        if not 0 < self.retriever_share < 1:
            raise ValueError(f"TrainConfig.retriever_share must be in (0, 1), got {self.retriever_share}")
        if self.item_ids not in ("tokens", "digits"):
            raise ValueError(f"TrainConfig.item_ids must be 'tokens' or 'digits', got {self.item_ids!r}")
        if self.content not in ("text", "none"):
            raise ValueError(f"TrainConfig.content must be 'text' or 'none', got {self.content!r}")
        if self.max_len < 2 or self.validate_users < 1 or self.validate_every_s <= 0:
            raise ValueError("TrainConfig.max_len must be >= 2, validate_users >= 1, validate_every_s > 0")
        if not 0 <= self.cold_items_share < 1:
            raise ValueError(f"TrainConfig.cold_items_share must be in [0, 1), got {self.cold_items_share}")
        object.__setattr__(self, "stages", default_stages(self.backbone) if self.stages is None else tuple(self.stages))
        if not self.stages or any(s not in STAGES for s in self.stages) or len(set(self.stages)) != len(self.stages):
            raise ValueError(f"TrainConfig.stages must be distinct names from {STAGES}, got {self.stages}")
        if self.preset not in PRESETS:
            raise ValueError(f"TrainConfig.preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if self.backbone is not None and (not self.backbone.strip() or self.backbone in PRESETS):
            # "t5-small" names the preset (random weights); the hub checkpoint is "google-t5/t5-small"
            raise ValueError(f"TrainConfig.backbone must be a hub name or a local folder of a pretrained T5, not "
                             f"a preset name (presets go in TrainConfig.preset; the pretrained t5-small is "
                             f"'google-t5/t5-small'), got {self.backbone!r}")
        for name in ("pretrain_steps", "adapt_steps", "batch_size", "checkpoint_every", "log_every", "threads"):
            if getattr(self, name) < (0 if name.endswith("_steps") else 1):
                raise ValueError(f"TrainConfig.{name} is out of range: {getattr(self, name)}")
        if self.lr is None:
            object.__setattr__(self, "lr", 1e-3 if self.item_init == "retriever" else 3e-3)
        if self.lr <= 0 or self.grad_clip <= 0 or self.weight_decay < 0:
            raise ValueError("TrainConfig.lr and TrainConfig.grad_clip must be > 0, weight_decay >= 0")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"TrainConfig.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError(f"TrainConfig.time_budget_s must be > 0 or None, got {self.time_budget_s}")

    def steps(self, stage: str) -> int:
        return self.pretrain_steps if stage == "pretrain" else self.adapt_steps

    def stage_budget_s(self, stage: str) -> float:
        if self.time_budget_s is None:
            return math.inf
        total = sum(self.steps(s) for s in self.stages) or 1
        return self.time_budget_s * self.steps(stage) / total


def default_stages(backbone: str | None) -> tuple[str, ...]:
    """A preset starts from random weights and needs "pretrain"; a pretrained backbone stays frozen."""
    return STAGES if backbone is None else ("adapt",)


@dataclass
class StageState:
    """Progress of one stage; saved in checkpoint/state.json."""

    stage: str
    step: int = 0
    elapsed_s: float = 0.0
    losses: list[float] = field(default_factory=list)  # mean loss per logging window
    done: bool = False


# ----------------------------------------------------------------------------- schedule


# ----------------------------------------------------------------------------- setup


def vip5_config(train: TrainConfig, data: RecData) -> VIP5Config:
    feature_dim = data.image_features.shape[1] if data.image_features is not None else 1280
    items = {"item_ids": "tokens", "n_items": data.n_items} if train.item_ids == "tokens" else {}
    return VIP5Config(backbone=train.backbone or train.preset, image_feature_dim=feature_dim,
                      dropout_rate=train.dropout_rate, **items, **train.model_overrides)


def build_model(train: TrainConfig, data: RecData, split: LeaveOneOut):
    """A new model: a preset with a tokenizer built from the run's texts, or a pretrained backbone
    with its own tokenizer, whose origin is then added to `<out_dir>/train_config.json`."""
    from model_worker.vip5model.model import VIP5Model
    from model_worker.vip5model.tokenizer import build_template_tokenizer

    config = vip5_config(train, data)
    tokenizer = None
    if config.is_preset:
        tokenizer = build_template_tokenizer([*tokenizer_corpus(data, split), config.sequence_prompt],
                                             vocab_size=train.tokenizer_vocab, image_token=config.image_token)
    model = VIP5Model.build(config, tokenizer, seed=train.seed)
    if model.backbone_origin is not None:
        record_backbone_origin(Path(train.out_dir), model.backbone_origin.to_dict())
        if model.item_tokens is not None and "pretrain" not in train.stages:
            log.warning("item_ids='tokens' on a frozen pretrained backbone: item id embeddings keep their random "
                        "init in stage 'adapt' (only content vectors and adapters train); see --item-ids digits")
    if model.item_vocabulary is not None:
        from model_worker.vip5model.items import ItemVocabulary

        model.item_vocabulary = ItemVocabulary(data.item_keys)  # the live system names items by key
    if model.item_tokens is not None and data.image_features is not None:
        rows = np.nonzero(data.has_image[1:])[0] + 1
        model.item_tokens.set_features(rows, data.image_features[rows])
    return model


def item_retriever(data: RecData, split: LeaveOneOut, config: TrainConfig, d_model: int, out: Path):
    """(SASRec, info) of the run's retriever: fitted on the run's split for `retriever_share` of
    its time budget and saved in `<out>/retriever/` (a `vip5 retriever` folder), or read back from
    there when the folder already holds one for the same items and split (a resumed run)."""
    from index.retriever import META_FILE, load_retriever, read_meta, save_retriever
    from index.sasrec import SASRecConfig

    from .retriever import fit_retriever

    folder = out / RETRIEVER_DIR
    if (folder / META_FILE).exists():
        meta = read_meta(folder)
        if meta["item_keys"] == list(data.item_keys) and meta["info"].get("split") == split_fields(config):
            return load_retriever(folder)[1], meta["info"]
        log.warning("%s holds a retriever for other items or another split: fitting a new one", folder)
    budget = config.retriever_share * (config.time_budget_s or 2400.0)
    scorer, info = fit_retriever(data, split, SASRecConfig(hidden=d_model, time_budget_s=budget, seed=config.seed),
                                 content=data.image_features)
    info = {"data": data.name, "split": split_fields(config), **info}
    save_retriever(scorer.model, data.item_keys, folder, info=info)
    log.info("retriever: %d epochs in %.0f s, validation %s", info["epochs"], info["train_s"], info["valid"])
    return scorer.model, info


def split_fields(config: TrainConfig) -> dict:
    """What decides a run's training split (recorded with its retriever)."""
    return {name: getattr(config, name) for name in SPLIT_FIELDS}


@torch.no_grad()
def init_item_tokens(model, retriever) -> None:
    """Start every item's id embedding from the retriever's item vector (ids, content and
    attributes folded in), scaled so that a decoder state of unit RMS gives the retriever's logits."""
    tokens = model.item_tokens
    table = retriever.item_table()[1:]  # (I, D)
    if table.shape != (tokens.n_items, tokens.id_embedding.weight.shape[1]):
        raise ValueError(f"retriever vectors {tuple(table.shape)} do not fit {tokens.n_items} item tokens of "
                         f"size {tokens.id_embedding.weight.shape[1]}")
    scale = retriever.final_scale().norm() / math.sqrt(table.shape[1])
    tokens.id_embedding.weight[1:tokens.n_items + 1] = table * scale


def write_run_config(out: Path, data_config: DataConfig, tasks: TaskConfig, train: TrainConfig) -> None:
    out.mkdir(parents=True, exist_ok=True)
    record = {"data": asdict(data_config), "tasks": asdict(tasks), "train": asdict(train)}
    (out / "train_config.json").write_text(json.dumps(record, indent=2, sort_keys=True))


def record_backbone_origin(out: Path, origin: dict) -> None:
    """Add the pretrained backbone's {name, sha256} to the run's train_config.json."""
    path = out / "train_config.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**record, "backbone_origin": origin}, indent=2, sort_keys=True))


def read_run_config(out: Path) -> tuple[DataConfig, TaskConfig, TrainConfig]:
    record = json.loads((out / "train_config.json").read_text())
    tasks = record["tasks"]
    tasks["family_weights"] = tuple(tasks["family_weights"])
    record["train"].setdefault("item_init", "random")  # runs recorded before retriever init
    return DataConfig(**record["data"]), TaskConfig(**tasks), TrainConfig(**record["train"])


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(model, optimizer, state: StageState, out: Path) -> None:
    """Trainable weights of the current stage + optimizer + state, written then swapped in."""
    tmp, final = out / "checkpoint.tmp", out / "checkpoint"
    if tmp.exists():
        _remove_tree(tmp)
    tmp.mkdir(parents=True)
    if state.stage == "pretrain":
        model.save_pretrained(tmp / "model")
    else:
        model.save_adapter(tmp / "adapter")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({**asdict(state), "stages_run": model.stages_run}, indent=2))
    if final.exists():
        _remove_tree(final)
    tmp.rename(final)


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)


def load_checkpoint(out: Path):
    """(model, state, optimizer state dict) from `out/checkpoint`, or None when there is none."""
    from model_worker.vip5model.model import VIP5Model

    checkpoint = out / "checkpoint"
    if not (checkpoint / "state.json").exists():
        return None
    record = json.loads((checkpoint / "state.json").read_text())
    stages_run = record.pop("stages_run")
    state = StageState(**record)
    if state.stage == "pretrain":
        model = VIP5Model.from_pretrained(checkpoint / "model")
    else:
        model = VIP5Model.from_pretrained(out / "pretrained")
        model.set_stage("adapt")
        model.load_adapter(checkpoint / "adapter")
    model.stages_run = stages_run
    optimizer_state = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    return model, state, optimizer_state


# ----------------------------------------------------------------------------- training


class Validator:
    """Next-item HR@10 on a seeded sample of validation users; keeps the best weights seen."""

    def __init__(self, split: LeaveOneOut, train: TrainConfig):
        users = validation_users(split, train.validate_users, train.seed)
        self.examples = [e for e in split.valid if e.user in users]
        self.max_len, self.every_s = train.max_len, train.validate_every_s
        self.history: list[dict] = []
        self.best: tuple[float, dict] | None = None

    def __call__(self, model, *, step: int, elapsed_s: float) -> float:
        from .evaluate import ItemTokenScorer, next_item_ranks
        from .metrics import rank_metrics

        hr10 = rank_metrics(next_item_ranks(ItemTokenScorer(model, max_len=self.max_len), self.examples))["hr@10"]
        self.history.append({"stage": model.stage, "step": step, "elapsed_s": round(elapsed_s, 1), "hr@10": hr10})
        if self.best is None or hr10 > self.best[0]:
            self.best = (hr10, {k: v.detach().clone() for k, v in model.state_dict().items()})
        model.train()
        return hr10

    def restore_best(self, model) -> None:
        if self.best is not None:
            model.load_state_dict(self.best[1])


def next_batch(model, sampler, images: dict, train: TrainConfig, rng: np.random.Generator):
    if isinstance(sampler, SequenceSampler):
        return sampler.sample(train.batch_size, rng)
    return model.encoder.encode(sampler.sample(train.batch_size, rng), images)


def run_stage(model, optimizer, state: StageState, sampler, images: dict, train: TrainConfig, out: Path,
              validator: Validator | None = None) -> StageState:
    """Train one stage from `state.step` until its steps or time run out; checkpoints as it goes,
    validates every `validate_every_s` (item tokens) and ends on the best weights it saw."""
    from tqdm import tqdm

    total, budget = train.steps(state.stage), train.stage_budget_s(state.stage)
    stage_index = STAGES.index(state.stage)
    model.train()
    window: list[float] = []
    started = time.monotonic() - state.elapsed_s
    last_validation = time.monotonic()
    bar = tqdm(total=total, initial=state.step, desc=state.stage, file=sys.stderr, dynamic_ncols=True)
    while state.step < total and state.elapsed_s < budget:
        rng = np.random.default_rng([train.seed, stage_index, state.step])
        batch = next_batch(model, sampler, images, train, rng)
        lr = train.lr * lr_factor(state.step, total, state.elapsed_s, budget, train.warmup_fraction)
        window.append(train_step(model, optimizer, batch, lr=lr, grad_clip=train.grad_clip))
        state.step += 1
        state.elapsed_s = time.monotonic() - started
        bar.update(1)
        if len(window) == train.log_every or state.step == total:
            state.losses.append(float(np.mean(window)))
            bar.set_postfix(loss=f"{state.losses[-1]:.3f}", lr=f"{lr:.1e}",
                            ex_s=f"{train.batch_size * state.step / max(state.elapsed_s, 1e-9):.0f}")
            window = []
        if state.step % train.checkpoint_every == 0:
            save_checkpoint(model, optimizer, state, out)
        if validator is not None and time.monotonic() - last_validation >= validator.every_s:
            hr10 = validator(model, step=state.step, elapsed_s=state.elapsed_s)
            bar.write(f"{state.stage} step {state.step}: validation hr@10 {hr10:.4f}", file=sys.stderr)
            last_validation = time.monotonic()
    bar.close()
    if window:
        state.losses.append(float(np.mean(window)))
    if validator is not None:
        validator(model, step=state.step, elapsed_s=state.elapsed_s)
        validator.restore_best(model)
    state.done = True
    save_checkpoint(model, optimizer, state, out)
    return state


def stage_summary(state: StageState, train: TrainConfig) -> dict:
    return {"stage": state.stage, "steps": state.step, "planned_steps": train.steps(state.stage),
            "train_s": round(state.elapsed_s, 1), "first_loss": state.losses[0] if state.losses else None,
            "last_loss": state.losses[-1] if state.losses else None, "losses": state.losses}


def with_content(data: RecData, config: TrainConfig, out: Path, content_encoder) -> RecData:
    """Items without image features get a text content vector in their feature slot
    (`text_content_vectors`, cached in `out`)."""
    if config.item_ids != "tokens" or config.content != "text" or data.image_features is not None:
        return data
    if content_encoder is None:
        raise ValueError("content='text' needs a content encoder (vip5 train passes the text encoder)")
    vectors = text_content_vectors(data, out, content_encoder)
    has = np.ones(data.n_items + 1, dtype=bool)
    has[0] = False
    return replace(data, image_features=vectors, has_image=has)


def text_content_vectors(data: RecData, out: Path, content_encoder) -> np.ndarray:
    """(I+1, C) the text encoder's vector of each item's title and category, row 0 zero; computed
    once and cached in `<out>/content_vectors.npy` with the item keys it belongs to."""
    cache, keys = out / "content_vectors.npy", out / "content_vectors_keys.json"
    if cache.exists() and keys.exists() and json.loads(keys.read_text()) == list(data.item_keys):
        return np.load(cache)
    texts = [content_encoder.item_text(data.title(i), data.category(i)) for i in range(1, data.n_items + 1)]
    started = time.monotonic()
    vectors = np.concatenate([np.zeros((1, content_encoder.dim), np.float32), content_encoder.encode(texts)])
    log.info("content vectors for %d items in %.0f s", data.n_items, time.monotonic() - started)
    out.mkdir(parents=True, exist_ok=True)
    np.save(cache, vectors)
    keys.write_text(json.dumps(list(data.item_keys)))
    return vectors


def train(data_config: DataConfig, tasks: TaskConfig, config: TrainConfig, *, resume: bool = False,
          content_encoder=None) -> dict:
    """Run (or resume) the configured stages; returns a summary with per-stage losses and times.
    `content_encoder` (`encode(texts)`, `item_text(title, category)`, `dim`) makes the content
    vectors of items that have no image features."""
    torch.set_num_threads(config.threads)
    out = Path(config.out_dir)
    data = with_content(load_data(data_config), config, out, content_encoder)
    split = training_split(data, train_on_valid=config.train_on_valid, validate_users=config.validate_users,
                           seed=config.seed, cold_items_share=config.cold_items_share)
    if config.item_ids == "tokens":
        sampler, images = SequenceSampler(split, bos=data.n_items + 1, max_len=config.max_len), {}
    else:
        sampler, images = TrainingSampler(data, split, tasks), image_lookup(data)
    validator = Validator(split, config) if config.item_ids == "tokens" and split.valid else None
    loaded = load_checkpoint(out) if resume else None
    if loaded is None:
        write_run_config(out, data_config, tasks, config)
        model, state, optimizer_state = build_model(config, data, split), None, None
    else:
        model, state, optimizer_state = loaded
        log.info("resuming stage %s at step %d", state.stage, state.step)
    retriever_info = None
    if config.item_init == "retriever":
        retriever, retriever_info = item_retriever(data, split, config, model.backbone.config.d_model, out)
        if loaded is None:
            init_item_tokens(model, retriever)
        if config.time_budget_s is not None:  # the stages share what the retriever left
            config = replace(config, time_budget_s=max(config.time_budget_s - retriever_info["train_s"], 1.0))
    summaries = _previous_summaries(out) if loaded is not None else []
    for stage in config.stages:
        if state is not None and STAGES.index(stage) < STAGES.index(state.stage):
            continue  # finished before the checkpoint
        if state is None or state.stage != stage:
            state, optimizer_state = StageState(stage), None
        elif state.done:
            state.done = False  # a longer run resumed: continue the same stage
        if stage == "adapt" and not (out / "pretrained").exists():
            model.save_pretrained(out / "pretrained")  # the frozen backbone adapter checkpoints refer to
        model.set_stage(stage)
        if config.freeze_item_ids and model.item_tokens is not None:
            model.item_tokens.id_embedding.weight.requires_grad_(False)
        optimizer = make_optimizer(model, lr=config.lr, weight_decay=config.weight_decay)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
        state = run_stage(model, optimizer, state, sampler, images, config, out, validator)
        summaries = [s for s in summaries if s["stage"] != stage] + [stage_summary(state, config)]
        _write_summaries(out, summaries)
        if stage == "pretrain":
            model.save_pretrained(out / "pretrained")
    model.save_pretrained(out / "model")
    if "adapt" in model.stages_run:
        model.save_adapter(out / "adapter")
    report = model.trainable_parameters()
    report.pop("groups")
    if validator is not None:
        (out / "validation.json").write_text(json.dumps(validator.history, indent=2))
    return {"out_dir": str(out), "stages": model.stages_run, "data": data.summary(),
            "validation": validator.history if validator is not None else [],
            "model": {"preset": config.preset, "backbone": config.backbone, **report}, "stage_runs": summaries,
            **({"retriever": retriever_info} if retriever_info is not None else {}),
            "train_s": round(sum(s["train_s"] for s in summaries) + (retriever_info or {}).get("train_s", 0.0), 1)}


def _previous_summaries(out: Path) -> list[dict]:
    path = out / "stages.json"
    return json.loads(path.read_text()) if path.exists() else []


def _write_summaries(out: Path, summaries: list[dict]) -> None:
    (out / "stages.json").write_text(json.dumps(summaries, indent=2))
