"""VIP5: a T5 encoder-decoder fed with multimodal personalized prompts, tuned through adapters.

In: an `EncodedBatch` (see encoding.py). Out: loss (training), encoder states (scoring), generated ids.
Letters: B batch, T source tokens, M image slots, F image feature size, k image tokens per item,
D d_model, L target tokens, V vocabulary.

Encoder input embedding of a prompt:
  token embedding (B, T, D), with the k placeholders of item m replaced by the image mapping
  network's output for m (F -> k x D: Linear, Tanh, Linear, LayerNorm), or by the learned
  "no image" tokens when m has no feature
  + whole-word embedding (which sub-tokens form one ID)   (optional, config.whole_word_embedding)
  + modality embedding (0 text, 1 image)

Two stages (`set_stage`): "pretrain" trains the backbone and the multimodal parts with adapters
left at identity (for preset backbones, which start from random weights); "adapt" freezes all of that and
trains only adapters, the image mapping network, the "no image" tokens and the backbone's layer
norms. Whole-word and modality embeddings are frozen in "adapt" as in the paper (its 3.58%
trainable share counts them frozen); the "no image" tokens train because they stand in for the
mapping network's output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.t5.modeling_t5 import T5LayerNorm

from .adapters import attach_adapters, is_adapter_param, pure_backbone_state_dict
from .backbone import BackboneOrigin, load_pretrained_backbone
from .checkpoint import apply_adapter, load_model_dir, read_adapter, save_adapter, save_model_dir
from .config import STAGES, VIP5Config, preset_t5_config
from .encoding import EncodedBatch, PromptEncoder
from .items import ItemTokens, ItemVocabulary

GROUPS = ("backbone", "layer_norms", "adapters", "image_mapping", "id_embeddings", "item_embeddings")


# How explanations are decoded, offline and live: beam search of 4, at least 10 new tokens, no
# repeated trigram. Chosen on the validation split of the Musical Instruments reviews, where greedy
# decoding wrote 6-word generic sentences (BLEU-4 0.0) and this reached BLEU-4 1.53 / ROUGE-L 20.6
# against 0.65 / 17.4 for the retrieval baseline.
EXPLANATION_DECODING = {"num_beams": 4, "min_new_tokens": 10, "no_repeat_ngram_size": 3, "do_sample": False}


class ImageMapping(nn.Module):
    """(..., F) -> (..., k, D): Linear(F, kD/2), Tanh, Linear(kD/2, kD), LayerNorm(kD), split in k."""

    def __init__(self, feature_dim: int, d_model: int, image_tokens: int):
        super().__init__()
        self.image_tokens, self.d_model = image_tokens, d_model
        width = d_model * image_tokens
        self.net = nn.Sequential(
            nn.Linear(feature_dim, width // 2), nn.Tanh(), nn.Linear(width // 2, width), T5LayerNorm(width)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.net(features)  # (..., k*D)
        return out.view(*features.shape[:-1], self.image_tokens, self.d_model)  # (..., k, D)


class VIP5Model(nn.Module):
    def __init__(self, config: VIP5Config, backbone: nn.Module, tokenizer):
        super().__init__()
        self.config, self.tokenizer = config, tokenizer
        if len(tokenizer) > backbone.config.vocab_size:
            backbone.resize_token_embeddings(len(tokenizer))
        self.backbone = backbone
        d_model = backbone.config.d_model
        self.image_mapping = ImageMapping(config.image_feature_dim, d_model, config.image_tokens)
        self.no_image = nn.Parameter(torch.randn(config.image_tokens, d_model))  # (k, D), unit RMS like LN output
        self.modality_embedding = nn.Embedding(2, d_model)
        nn.init.normal_(self.modality_embedding.weight, std=0.1)
        self.whole_word_embedding = None
        if config.whole_word_embedding:
            self.whole_word_embedding = nn.Embedding(config.whole_word_vocab, d_model)
            nn.init.normal_(self.whole_word_embedding.weight, std=0.1)
        self.item_tokens, self.item_vocabulary = None, None
        if config.item_ids == "tokens":
            self.item_tokens = ItemTokens(config.n_items, d_model, config.image_feature_dim)
            # row i <-> the i-th key; offline data numbers items 1..I, the live system names them
            self.item_vocabulary = ItemVocabulary(str(i) for i in range(1, config.n_items + 1))
        self.adapters = attach_adapters(backbone, config)  # None for LoRA (lives inside the backbone)
        self.encoder = PromptEncoder(tokenizer, config)
        self.stage: str | None = None
        self.stages_run: list[str] = []
        self._frozen_sha256: str | None = None
        self.backbone_origin: BackboneOrigin | None = None  # pretrained backbones: where it came from

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def build(cls, config: VIP5Config, tokenizer=None, *, seed: int | None = None) -> VIP5Model:
        """A new model: preset backbones get random weights (needs `tokenizer`); otherwise the
        backbone (and, if `tokenizer` is None, its tokenizer) load from the hub name / local path,
        and `backbone_origin` records where from and the digest of the weights (see backbone.py)."""
        from transformers import T5ForConditionalGeneration

        if seed is not None:
            torch.manual_seed(seed)
        if not config.is_preset:
            backbone, tokenizer, origin = load_pretrained_backbone(config.backbone, image_token=config.image_token,
                                                                   tokenizer=tokenizer)
            model = cls(config, backbone, tokenizer)
            model.backbone_origin = origin
            return model
        if tokenizer is None:
            raise ValueError("a preset backbone needs a tokenizer (see tokenizer.build_tokenizer)")
        t5_config = preset_t5_config(config, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=tokenizer.eos_token_id)
        return cls(config, T5ForConditionalGeneration(t5_config), tokenizer)

    @classmethod
    def from_pretrained(cls, path) -> VIP5Model:
        """Load a directory written by `save_pretrained` (see checkpoint.py)."""
        return load_model_dir(path, cls)

    def save_pretrained(self, path) -> None:
        save_model_dir(self, path)

    @property
    def device(self) -> torch.device:
        return self.no_image.device

    # ---- forward --------------------------------------------------------------------------------

    def embed(self, batch: EncodedBatch) -> torch.Tensor:
        """Encoder input embeddings (B, T, D)."""
        x = self.backbone.get_input_embeddings()(batch.input_ids)  # (B, T, D)
        is_image = batch.modality_ids == 1  # (B, T)
        if is_image.any():
            x = torch.where(is_image[..., None], self._image_tokens_at(batch, is_image), x)
        x = x + self.modality_embedding(batch.modality_ids)
        if self.whole_word_embedding is not None:
            x = x + self.whole_word_embedding(batch.whole_word_ids)
        return x

    def _image_tokens_at(self, batch: EncodedBatch, is_image: torch.Tensor) -> torch.Tensor:
        """(B, T, D): the image token for every placeholder position (garbage elsewhere)."""
        vis = self.image_mapping(batch.image_features)  # (B, M, k, D)
        vis = torch.where(batch.image_mask[..., None, None], vis, self.no_image.to(vis.dtype))
        vis = vis.flatten(1, 2)  # (B, M*k, D), item-major: item m's tokens at m*k .. m*k+k-1
        rank = is_image.long().cumsum(dim=1) - 1  # (B, T) placeholder order within the row
        assert int(rank.max()) < vis.shape[1], "more image placeholders than image slots x k"
        index = rank.clamp(min=0)[..., None].expand(-1, -1, vis.shape[-1])  # (B, T, D)
        return vis.gather(1, index)

    def encode(self, batch: EncodedBatch) -> BaseModelOutput:
        """Encoder states (B, T, D) wrapped for `generate`/decoder calls."""
        return self.backbone.get_encoder()(inputs_embeds=self.embed(batch), attention_mask=batch.attention_mask)

    def forward(self, batch: EncodedBatch) -> dict:
        """Returns loss (mean over prompts of each prompt's mean target-token NLL), per_prompt_loss
        (B,) and logits (B, L, V). Averaging per prompt first keeps long explanation targets from
        outweighing 5-token item ids."""
        if batch.labels is None:
            raise ValueError("forward needs batch.labels (encode with with_labels=True)")
        out = self.backbone(encoder_outputs=self.encode(batch), attention_mask=batch.attention_mask,
                            labels=batch.labels)
        logits = out.logits  # (B, L, V)
        nll = F.cross_entropy(logits.transpose(1, 2), batch.labels, ignore_index=-100, reduction="none")  # (B, L)
        counts = (batch.labels != -100).sum(dim=1).clamp(min=1)
        per_prompt = nll.sum(dim=1) / counts  # (B,)
        return {"loss": per_prompt.mean(), "per_prompt_loss": per_prompt, "logits": logits}

    @torch.no_grad()
    def generate(self, batch: EncodedBatch, **generate_kwargs) -> torch.Tensor:
        """Token ids (B * num_return_sequences, L'); e.g. explanations with greedy decoding."""
        generate_kwargs.setdefault("max_new_tokens", self.config.max_target_length)
        return self.backbone.generate(encoder_outputs=self.encode(batch), attention_mask=batch.attention_mask,
                                      **generate_kwargs)

    def generate_text(self, batch: EncodedBatch, **generate_kwargs) -> list[str]:
        ids = self.generate(batch, **generate_kwargs)
        return [text.strip() for text in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def explain_text(self, batch: EncodedBatch, *, max_new_tokens: int) -> list[str]:
        """Explanations of explanation prompts, decoded as `EXPLANATION_DECODING` says (at most
        `max_new_tokens`, at least `min_new_tokens` of it when room allows)."""
        decoding = {**EXPLANATION_DECODING, "min_new_tokens": min(EXPLANATION_DECODING["min_new_tokens"], max_new_tokens)}
        return self.generate_text(batch, max_new_tokens=max_new_tokens, **decoding)

    # ---- item tokens: next item over the whole catalogue ------------------------------------------

    def task_prompt_states(self, batch_size: int) -> torch.Tensor:
        """Encoder states of the sequential task prompt, (B, T, D): the prompt selects the task.
        Outside training they are kept until an encoder tensor changes (as `item_table`)."""
        encoder = self.backbone.get_encoder()

        def encode() -> torch.Tensor:
            ids = self.tokenizer(self.config.sequence_prompt, return_tensors="pt").input_ids.to(self.device)  # (1, T)
            return encoder(input_ids=ids).last_hidden_state  # (1, T, D)

        states = self._kept("task_prompt", [*encoder.parameters(), *encoder.buffers()], encode)
        return states.expand(batch_size, -1, -1)

    def sequence_states(self, rows: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """rows (B, L): [start, item, item, ...] right-padded with 0 -> decoder states (B, L, D).
        Position t's state scores the item that follows rows[:, t]."""
        decoder = self.backbone.get_decoder()
        return decoder(inputs_embeds=table[rows], attention_mask=(rows > 0).long(),
                       encoder_hidden_states=self.task_prompt_states(rows.shape[0])).last_hidden_state

    def item_table(self) -> torch.Tensor:
        """(I+2, D): every item's token (id embedding + mapped content feature). Outside training
        the table is kept until a tensor it depends on changes (an adapter swap points the mapping
        at other tensors; an in-place update bumps a tensor's version)."""
        tensors = [*self.item_tokens.parameters(), *self.item_tokens.buffers(), *self.image_mapping.parameters()]
        rule = self._new_items()  # part of the name: a changed rule is another table
        return self._kept(f"item_table {rule}", tensors, lambda: self.item_tokens.table(self.image_mapping, **rule))

    def _new_items(self) -> dict:
        """How items without a trained id get one (`ItemTokens.parts`' neighbours and temperature)."""
        return {"neighbours": self.config.new_item_neighbours, "temperature": self.config.new_item_temperature}

    def _kept(self, name: str, tensors: list[torch.Tensor], compute) -> torch.Tensor:
        """compute(), or outside training (no grad) the value kept from the last call while no tensor
        in `tensors` has moved (data pointer) or changed in place (version). The kept value holds
        its tensors' storage, so a freed slot's memory cannot come back under the same pointer."""
        if self.training or torch.is_grad_enabled():
            return compute()
        key = tuple((t.data_ptr(), t._version, tuple(t.shape)) for t in tensors)
        kept = self.__dict__.setdefault("_kept_values", {})
        if name not in kept or kept[name][0] != key:
            kept[name] = (key, compute(), [t.detach() for t in tensors])
        return kept[name][1]

    def sequence_loss(self, rows: torch.Tensor) -> torch.Tensor:
        """rows (B, L+1): [start, i_1, ..., i_L] right-padded; softmax cross-entropy over all items
        for every next item i_1..i_L (one forward pass, L targets per sequence), plus
        `content_loss_weight` x the same loss with every item named by its content part alone."""
        dropout = self.config.item_id_dropout if self.training else 0.0
        ids, content = self.item_tokens.parts(self.image_mapping, id_dropout=dropout, **self._new_items())
        table = ids if content is None else ids + content
        inputs, targets = rows[:, :-1], rows[:, 1:]  # (B, L)
        states = self.sequence_states(inputs, table)[targets > 0]  # (N, D)
        wanted = targets[targets > 0] - 1  # column j is item row j+1
        items = slice(1, self.item_tokens.n_items + 1)
        loss = F.cross_entropy(states @ table[items].T, wanted)  # logits (N, I)
        if content is not None and self.config.content_loss_weight > 0:
            loss = loss + self.config.content_loss_weight * F.cross_entropy(states @ content[items].T, wanted)
        return loss

    @torch.no_grad()
    def history_states(self, histories: torch.Tensor, lengths: torch.Tensor, table: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """histories (B, L) item rows right-padded, lengths (B,) -> (B, D): the decoder state after
        each history's last item (the query every next-item score is a dot product with)."""
        table = self.item_table() if table is None else table
        start = torch.full((histories.shape[0], 1), self.item_tokens.bos, dtype=torch.long, device=histories.device)
        states = self.sequence_states(torch.cat([start, histories], dim=1), table)  # (B, L+1, D)
        return states[torch.arange(len(lengths), device=states.device), lengths]  # (B, D)

    @torch.no_grad()
    def next_item_scores(self, histories: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """histories (B, L) item rows right-padded, lengths (B,) -> scores (B, I+1) of every item as
        the next one (column 0, padding, is -inf)."""
        table = self.item_table()
        scores = self.history_states(histories, lengths, table) @ table[:self.item_tokens.n_items + 1].T  # (B, I+1)
        scores[:, 0] = float("-inf")
        return scores

    @torch.no_grad()
    def new_item_tokens(self, features: torch.Tensor) -> torch.Tensor:
        """features (N, F) -> (N, D): the token of an item known only by its content (an item that
        arrived after training), as `items.ItemTokens` builds it: the id part borrowed from its
        nearest trained items by content, plus the content part."""
        tokens, rule = self.item_tokens, self._new_items()
        keys = self._kept("neighbour_keys", [tokens.features, tokens.has_feature, tokens.has_id], tokens.neighbour_keys)
        content = self.image_mapping(features).mean(dim=-2) * tokens.content_scale
        return content + tokens.neighbour_ids(features, rule["neighbours"], rule["temperature"], keys=keys)

    def loss(self, batch) -> torch.Tensor:
        """Training loss of a prompt `EncodedBatch` (digit ids and text targets) or of item-token rows."""
        if isinstance(batch, torch.Tensor):
            return self.sequence_loss(batch)
        return self(batch)["loss"]

    # ---- stages and parameter groups ------------------------------------------------------------

    def param_group(self, name: str) -> str:
        if is_adapter_param(name):
            return "adapters"
        if name.startswith(("image_mapping.", "no_image")):
            return "image_mapping"
        if name.startswith(("whole_word_embedding.", "modality_embedding.")):
            return "id_embeddings"
        if name.startswith("item_tokens."):
            return "item_embeddings"
        if name.startswith("backbone.") and "layer_norm" in name:
            return "layer_norms"
        return "backbone"

    def trainable_in(self, stage: str, name: str) -> bool:
        group = self.param_group(name)
        if stage == "pretrain":
            return group != "adapters"
        if stage == "adapt":
            return group in ("adapters", "image_mapping", "layer_norms")
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")

    def set_stage(self, stage: str) -> None:
        """Set requires_grad for `stage` and record it in `stages_run` (saved with checkpoints)."""
        for name, param in self.named_parameters():
            param.requires_grad_(self.trainable_in(stage, name))
        self.stage = stage
        self._frozen_sha256 = None  # see checkpoint.backbone_sha256
        if not self.stages_run or self.stages_run[-1] != stage:
            self.stages_run.append(stage)

    def trainable_parameters(self) -> dict:
        """Parameter counts by group (tied weights counted once) and the trainable share."""
        groups = {g: {"params": 0, "trainable": 0} for g in GROUPS}
        for name, param in self.named_parameters():
            group = groups[self.param_group(name)]
            group["params"] += param.numel()
            group["trainable"] += param.numel() if param.requires_grad else 0
        total = sum(g["params"] for g in groups.values())
        trainable = sum(g["trainable"] for g in groups.values())
        return {"total_params": total, "trainable_params": trainable,
                "trainable_fraction": trainable / total, "groups": groups}

    def adapt_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything stage "adapt" trains: the adapter artifact's contents."""
        return {n: p.detach() for n, p in self.named_parameters() if self.trainable_in("adapt", n)}

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """Backbone weights under stock T5 names (no LoRA factors)."""
        return pure_backbone_state_dict(self.backbone.state_dict())

    # ---- adapters -------------------------------------------------------------------------------

    def save_adapter(self, path) -> None:
        save_adapter(self, path)

    def load_adapter(self, path, *, check_backbone: bool = True) -> None:
        """Swap in adapter weights saved by `save_adapter` (validated before anything is copied)."""
        apply_adapter(self, read_adapter(path), check_backbone=check_backbone)
