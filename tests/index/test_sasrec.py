"""SASRec's training loop: with a validation function it keeps the best epoch's weights and stops
once validation stops improving."""

import torch

from index.sasrec import SASRecConfig, SASRecScorer

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
