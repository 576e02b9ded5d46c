"""SASRec's training loop: with a validation function it keeps the best epoch's weights and stops
once validation stops improving. Towers: independent SASRecs whose scores are averaged."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from index.sasrec import SASRec, SASRecConfig, SASRecScorer, left_pad, sasrec_model

TRAIN = [[1, 2, 3, 4, 5], [2, 3, 4, 5, 6], [3, 4, 5, 6, 7]] * 10


def test_training_keeps_the_best_validated_epoch_and_stops_after_patience_runs_out():
    scores = iter([0.1, 0.3, 0.2, 0.25, 0.9])  # the fifth is never asked for
    weights_seen = {}

    def validate(scorer):
        epoch = len(scorer.validation) + 1
        weights_seen[epoch] = {k: v.clone() for k, v in scorer.model.state_dict().items()}
        assert not scorer.model.training  # validated in eval mode (no dropout)
        return next(scores)

    scorer = SASRecScorer(TRAIN, 7, SASRecConfig(hidden=8, max_len=6, max_epochs=20, patience=2), validate=validate)
    assert scorer.validation == [(1, 0.1), (2, 0.3), (3, 0.2), (4, 0.25)]
    assert scorer.best_epoch == 2 and scorer.epochs_run == 4
    assert not scorer.model.training
    for name, tensor in scorer.model.state_dict().items():
        assert torch.equal(tensor, weights_seen[2][name])
    assert scorer.info()["best_epoch"] == 2


def test_without_validation_training_runs_its_epochs_and_keeps_the_last_weights():
    scorer = SASRecScorer(TRAIN, 7, SASRecConfig(hidden=8, max_len=6, max_epochs=3))
    assert scorer.epochs_run == 3 and scorer.best_epoch is None and scorer.validation == []


def test_a_two_tower_model_scores_an_item_as_the_mean_of_its_towers_scores():
    scorer = SASRecScorer(TRAIN, 7, SASRecConfig(hidden=8, max_len=6, max_epochs=2, towers=2))
    towers = scorer.model.towers
    assert [t.config.hidden for t in towers] == [4, 4]
    assert not torch.equal(towers[0].item_emb.weight, towers[1].item_emb.weight)  # initialised on their own
    history = [2, 3, 4]
    x = torch.tensor([left_pad(history, 6)])
    with torch.no_grad():
        each = [(t(x)[:, -1] @ t.item_table().T).numpy() for t in towers]
    assert np.allclose(scorer.scores([history])[0, 1:], (each[0] + each[1])[0, 1:] / 2, atol=1e-5)


def test_towers_train_each_on_its_own_loss():
    model = sasrec_model(7, SASRecConfig(hidden=8, max_len=6, towers=2, dropout=0.0))
    seqs, pos = torch.tensor([[1, 2, 3]]), torch.tensor([[2, 3, 4]])
    model.ce_loss(seqs, pos).backward()
    alone = SASRec(7, SASRecConfig(hidden=4, max_len=6, dropout=0.0))
    alone.load_state_dict(model.towers[1].state_dict())
    (alone.ce_loss(seqs, pos) / 2).backward()  # the towers' mean loss: each tower gets half its own gradient
    for (name, got), want in zip(model.towers[1].named_parameters(), alone.parameters(), strict=True):
        assert torch.allclose(got.grad, want.grad, atol=1e-6), name


def test_a_width_the_towers_and_heads_cannot_share_is_refused():
    with pytest.raises(ValueError, match="towers x n_heads"):
        SASRecConfig(hidden=10, towers=4)
    with pytest.raises(ValueError, match="sasrec_model"):
        SASRec(7, SASRecConfig(hidden=8, towers=2))


def test_label_smoothing_moves_that_share_of_the_target_onto_all_items():
    seqs, pos = torch.tensor([[0, 1, 2, 3]]), torch.tensor([[0, 2, 3, 4]])  # three targets, one padding column
    plain = SASRec(7, SASRecConfig(hidden=8, max_len=6, dropout=0.0))
    smoothed = SASRec(7, SASRecConfig(hidden=8, max_len=6, dropout=0.0, label_smoothing=0.2))
    smoothed.load_state_dict(plain.state_dict())
    with torch.no_grad():
        log_p = torch.log_softmax(plain(seqs)[0, 1:] @ plain.item_table()[1:].T, dim=-1)  # (3, 7): items 1..7
        nll = -log_p[torch.arange(3), pos[0, 1:] - 1].mean()
        uniform = -log_p.mean()  # cross-entropy against a uniform target over all items
        assert torch.isclose(plain.ce_loss(seqs, pos), nll, atol=1e-5)
        assert torch.isclose(smoothed.ce_loss(seqs, pos), 0.8 * nll + 0.2 * uniform, atol=1e-5)


def test_label_smoothing_needs_the_softmax_loss_and_a_share_below_one():
    with pytest.raises(ValueError, match="needs loss='ce'"):
        SASRecConfig(loss="bce", label_smoothing=0.1)
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        SASRecConfig(label_smoothing=1.0)


def seeded_start(config: SASRecConfig) -> dict[str, torch.Tensor]:
    """The weights a fit with this config starts from (the fit seeds torch with config.seed)."""
    torch.manual_seed(config.seed)
    return SASRec(7, config).state_dict()


def distance(params, start) -> float:
    return sum(float((tensor.detach() - start[name]).norm()) for name, tensor in params.items())


def test_with_a_weight_average_validation_scores_and_training_keeps_the_average():
    validated = []

    def validate(scorer):
        validated.append({k: v.detach().clone() for k, v in scorer.model.named_parameters()})
        return float(len(validated))  # every epoch is a new best: the last one is kept

    # 8 steps an epoch; at this decay the average stays near the weights after the first step
    config = SASRecConfig(hidden=8, max_len=6, max_epochs=4, batch_size=4, ema_decay=0.999)
    start = seeded_start(config)
    averaged = SASRecScorer(TRAIN, 7, config, validate=validate)
    raw = SASRecScorer(TRAIN, 7, replace(config, ema_decay=0.0), validate=lambda s: len(s.validation))
    raw_moved = distance(dict(raw.model.named_parameters()), start)
    assert all(distance(seen, start) < raw_moved / 5 for seen in validated)  # validation saw the average
    kept = {k: v.detach() for k, v in averaged.model.named_parameters()}
    assert all(torch.equal(kept[name], validated[-1][name]) for name in kept)  # and training kept it
    assert averaged.info()["ema_decay"] == 0.999


def test_without_validation_a_weight_average_is_what_training_keeps():
    config = SASRecConfig(hidden=8, max_len=6, max_epochs=2)
    start = seeded_start(config)
    plain = SASRecScorer(TRAIN, 7, config)
    averaged = SASRecScorer(TRAIN, 7, replace(config, ema_decay=0.9))
    moved = [distance(dict(s.model.named_parameters()), start) for s in (averaged, plain)]
    assert 0 < moved[0] < moved[1]  # the average lags the last step
