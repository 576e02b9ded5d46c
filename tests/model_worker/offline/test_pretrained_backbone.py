"""`vip5 train --backbone PATH`: adapters on a frozen pretrained T5, as in the paper, from the command line.

The "pretrained" T5 is a tiny randomly initialised `T5ForConditionalGeneration` saved to a local
folder with a T5 tokenizer (a SentencePiece Unigram vocabulary trained on a small corpus), so
nothing is downloaded.
"""

import json
import string
from pathlib import Path

import pytest
import torch

from model_worker.offline.train import TrainConfig
from vip5.cli import main

SLICE = Path(__file__).resolve().parents[2] / "data" / "beauty_slice"
CORPUS = [
    "Given the following purchase history of user_12 : 67 , 89 predict next possible item to be purchased",
    "Will user_12 likely to interact with item_345 ? yes no Can you recommend the next item to the user",
    "Here is the purchase history list of user_7 : 1 , 2 , 3 , 4 , 5 , 6 , 7 , 8 , 9 , 10 try to recommend",
] * 4


def t5_tokenizer(corpus: list[str], *, vocab_size: int = 200):
    """A T5 tokenizer whose Unigram (SentencePiece) vocabulary is trained on `corpus`: <pad> 0, </s> 1, <unk> 2."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", initial_alphabet=list(string.printable.strip()),
                                      show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    pieces = json.loads(tokenizer.to_str())["model"]["vocab"]
    return T5Tokenizer(vocab=[(piece, score) for piece, score in pieces], extra_ids=4)


def save_tiny_t5(path: Path, *, seed: int) -> Path:
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = t5_tokenizer(CORPUS)
    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=64, d_kv=8, num_heads=2, num_layers=1,
                      num_decoder_layers=1, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    T5ForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory) -> Path:
    return save_tiny_t5(tmp_path_factory.mktemp("t5") / "tiny-t5", seed=0)


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _train(backbone: Path, out: Path, capsys, *extra: str) -> dict:
    status = main(["train", "--backbone", str(backbone), "--data", str(SLICE), "--out", str(out),
                   "--item-ids", "digits", "--adapt-steps", "2", "--pretrain-steps", "1", "--batch-size", "2",
                   "--train-candidates", "4", "--history-len", "5", "--threads", "1", "--json", *extra])
    assert status == 0
    return json.loads(capsys.readouterr().out)


def test_a_pretrained_backbone_runs_only_the_adapter_stage_by_default(tmp_path):
    assert TrainConfig(out_dir=str(tmp_path), backbone="google-t5/t5-small").stages == ("adapt",)
    assert TrainConfig(out_dir=str(tmp_path)).stages == ("pretrain", "adapt")
    asked = TrainConfig(out_dir=str(tmp_path), backbone="google-t5/t5-small", stages=("pretrain", "adapt"))
    assert asked.stages == ("pretrain", "adapt")


def test_a_preset_name_is_not_taken_for_a_pretrained_backbone(tmp_path):
    with pytest.raises(ValueError, match="TrainConfig.backbone .* not a preset name .*google-t5/t5-small"):
        TrainConfig(out_dir=str(tmp_path), backbone="t5-small")


def test_training_from_a_local_t5_keeps_it_frozen_and_records_where_it_came_from(tiny_t5, tmp_path, capsys):
    from transformers import T5ForConditionalGeneration

    from model_worker.vip5model.backbone import weights_sha256
    from model_worker.vip5model.model import VIP5Model

    out = tmp_path / "run"
    trained = _train(tiny_t5, out, capsys)
    assert trained["stages"] == ["adapt"]

    source = T5ForConditionalGeneration.from_pretrained(tiny_t5)
    origin = {"name": str(tiny_t5.resolve()), "sha256": weights_sha256(source)}
    run = json.loads((out / "train_config.json").read_text())
    assert run["backbone_origin"] == origin and run["train"]["backbone"] == str(tiny_t5)
    assert json.loads((out / "model" / "vip5_config.json").read_text())["backbone_origin"] == origin
    assert json.loads((out / "adapter" / "adapter.json").read_text())["backbone_origin"] == origin

    model = VIP5Model.from_pretrained(out / "model")  # what `vip5 serve` and the trainer load
    assert model.tokenizer.convert_tokens_to_ids("<image>") == len(model.tokenizer) - 1  # added to T5's vocab
    weights = model.backbone_state_dict()
    for name, tensor in source.state_dict().items():  # frozen but for the layer norms "adapt" trains;
        if "layer_norm" not in name:  # the embeddings grew by one row, the image token
            assert torch.equal(weights[name][:len(tensor)], tensor), name
    model.load_adapter(out / "adapter")

    status = main(["evaluate", "--model-dir", str(out), "--max-users", "3", "--baselines", "popularity",
                   "--max-explanations", "1", "--direct-negatives", "4", "--threads", "1", "--method", "topk",
                   "--rerank-candidates", "10", "--json"])
    assert status == 0 and {"sequential", "direct"} <= set(json.loads(capsys.readouterr().out))


def test_an_adapter_is_refused_by_a_model_on_another_backbone(tiny_t5, tmp_path, capsys):
    from model_worker.vip5model.config import VIP5Config
    from model_worker.vip5model.model import VIP5Model

    out = tmp_path / "run"
    _train(tiny_t5, out, capsys, "--adapt-steps", "1")
    other = save_tiny_t5(tmp_path / "other-t5", seed=1)
    config = VIP5Config.from_dict(json.loads((out / "model" / "vip5_config.json").read_text())["config"])
    model = VIP5Model.build(config.replace(backbone=str(other)), seed=0)
    with pytest.raises(ValueError, match=r"different backbone \(backbone_sha256 mismatch\).*tiny-t5.*other-t5"):
        model.load_adapter(out / "adapter")


def test_the_pretrain_stage_runs_on_a_pretrained_backbone_when_asked_for(tiny_t5, tmp_path, capsys):
    trained = _train(tiny_t5, tmp_path / "run", capsys, "--stages", "pretrain,adapt", "--adapt-steps", "1")
    assert trained["stages"] == ["pretrain", "adapt"]
