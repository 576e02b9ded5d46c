import json

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from model_worker.vip5model.config import VIP5Config
from model_worker.vip5model.model import VIP5Model
from model_worker.vip5model.prompts import direct_prompt, template_corpus
from model_worker.vip5model.scoring import score_candidates
from model_worker.vip5model.tokenizer import build_tokenizer
from model_worker.vip5model.trie import ItemTrie

from .conftest import ADAPTER_KINDS, FEATURE_DIM

CANDIDATES = [str(i) for i in range(40, 60)]


def _scores(model, features):
    batch = model.encoder.encode([direct_prompt("B-5", 3, CANDIDATES)], features, with_labels=False)
    return score_candidates(model, batch, [ItemTrie.from_items(model.encoder, CANDIDATES)])[0]


@pytest.mark.parametrize("kind", ADAPTER_KINDS)
def test_model_directory_loads_back_by_local_path(kind, make_model, features, tmp_path):
    model = make_model(kind)
    model.set_stage("pretrain")
    model.set_stage("adapt")
    model.save_pretrained(tmp_path / "model")
    loaded = VIP5Model.from_pretrained(tmp_path / "model").eval()
    assert loaded.config == model.config
    assert loaded.stages_run == ["pretrain", "adapt"]
    assert torch.equal(_scores(loaded, features), _scores(model, features))
    # the backbone folder is a stock T5 checkpoint
    plain = T5ForConditionalGeneration.from_pretrained(tmp_path / "model" / "backbone")
    assert set(plain.state_dict()) == set(model.backbone_state_dict())


def test_damaged_parts_file_is_refused(make_model, tmp_path):
    make_model("bottleneck").save_pretrained(tmp_path / "model")
    meta_path = tmp_path / "model" / "vip5_config.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["image_tokens"] = 3  # the saved mapping network emits 2 tokens
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="shape mismatch"):
        VIP5Model.from_pretrained(tmp_path / "model")


def test_pretrained_backbone_and_tokenizer_load_from_a_local_directory(features, tmp_path):
    # stand-in for a downloaded checkpoint: a stock T5 and a tokenizer without the "<image>" token
    checkpoint = tmp_path / "t5"
    plain_tokenizer = build_tokenizer(template_corpus(), vocab_size=300, image_token="<photo>")
    t5 = T5ForConditionalGeneration(T5Config(d_model=32, d_ff=64, num_layers=1, num_heads=2, d_kv=16,
                                             vocab_size=len(plain_tokenizer), decoder_start_token_id=0))
    t5.save_pretrained(checkpoint)
    plain_tokenizer.save_pretrained(checkpoint)
    model = VIP5Model.build(VIP5Config(backbone=str(checkpoint), image_feature_dim=FEATURE_DIM))
    assert len(model.tokenizer) == len(plain_tokenizer) + 1  # the placeholder token was added
    assert model.backbone.config.vocab_size >= len(model.tokenizer)  # and the embeddings grew
    assert model.tokenizer.convert_tokens_to_ids("<image>") != model.tokenizer.unk_token_id
    assert _scores(model.eval(), features).shape == (len(CANDIDATES),)
