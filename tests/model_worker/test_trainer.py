"""The incremental adapter trainer and the artifact store, without Kafka."""

import time

import pytest

from model_worker.artifacts import ArtifactError, ArtifactStore, load_verified
from model_worker.trainer import AdapterTrainer, TrainerConfig, next_version
from model_worker.tuning import TuneConfig
from model_worker.vip5model.checkpoint import backbone_sha256
from schemas.records import Interaction


def clicks(user: str, items: list[str]) -> list[Interaction]:
    return [Interaction(event_id=f"{user}-{n}", user_id=user, item_id=item, kind="click", event_time_ms=n)
            for n, item in enumerate(items)]


@pytest.fixture
def store(tmp_path):
    return ArtifactStore(tmp_path / "artifacts", signing_key=b"k" * 32)


def trainer_for(model, store, *, max_regression: float) -> AdapterTrainer:
    cfg = TrainerConfig(model_dir="unused", every_events=10, min_events=4, max_regression=max_regression,
                        tune=TuneConfig(steps=2, batch_size=4, warmup_steps=1))
    model.set_stage("adapt")
    return AdapterTrainer(cfg, model, backbone_id=backbone_sha256(model), version="v1", store=store)


def test_the_first_event_of_a_user_is_context_not_an_example(make_model, store):
    trainer = trainer_for(make_model(), store, max_regression=0.0)
    for event in clicks("u1", ["1", "2", "3"]):
        trainer.observe(event)
    assert [(e.before, e.target) for e in trainer.fresh] == [(("1",), "2"), (("1", "2"), "3")]


def test_a_round_is_due_after_every_events(make_model, store):
    trainer = trainer_for(make_model(), store, max_regression=0.0)
    for event in clicks("u1", [str(i) for i in range(1, 11)]):
        trainer.observe(event)
    assert not trainer.due()
    trainer.observe(clicks("u1", ["11"])[0])
    assert trainer.due()


def test_accepted_round_publishes_a_verifiable_next_version(make_model, store, features):
    trainer = trainer_for(make_model(), store, max_regression=10.0)
    for user in ("u1", "u2"):
        for event in clicks(user, [str(i) for i in range(1, 8)]):
            trainer.observe(event)
    update = trainer.round(features, sorted(features))
    assert update is not None and update.version == "v2" and update.parent_version == "v1"
    assert {"holdout_mrr_before", "holdout_mrr_after"} <= set(update.metrics)
    assert trainer.version == "v2" and not trainer.fresh
    artifact = load_verified(update, backbone_id=trainer.backbone_id, store=store)
    assert set(artifact.tensors) == set(trainer.model.adapt_state_dict())
    assert next_version(store) == "v3"


def test_a_candidate_worse_than_the_margin_is_not_published(make_model, store, features):
    trainer = trainer_for(make_model(), store, max_regression=-10.0)  # demands an impossible improvement
    for event in clicks("u1", [str(i) for i in range(1, 9)]):
        trainer.observe(event)
    assert trainer.round(features, sorted(features)) is None
    assert store.manifests() == [] and trainer.version == "v1"


def test_corrupt_missing_or_foreign_artifacts_are_rejected(make_model, store):
    model = make_model()
    model.set_stage("adapt")
    backbone = backbone_sha256(model)
    update = store.publish(model, version="v2", parent_version="v1", metrics={}, backbone_id=backbone)
    with pytest.raises(ArtifactError, match="is for backbone"):
        load_verified(update, backbone_id="0" * 64, store=store)
    weights = store.root / "v2" / "adapter.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ArtifactError, match="sha256"):
        load_verified(update, backbone_id=backbone, store=store)
    weights.unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_verified(update, backbone_id=backbone, store=store)


def test_versions_are_immutable_and_rollback_points_at_an_existing_one(make_model, store):
    model = make_model()
    model.set_stage("adapt")
    backbone = backbone_sha256(model)
    first = store.publish(model, version="v1", parent_version=None, metrics={}, backbone_id=backbone)
    time.sleep(0.01)
    store.publish(model, version="v2", parent_version="v1", metrics={"m": 1.0}, backbone_id=backbone)
    with pytest.raises(ArtifactError, match="already exists"):
        store.publish(model, version="v2", parent_version="v1", metrics={}, backbone_id=backbone)
    assert [m["version"] for m in store.manifests()] == ["v1", "v2"]
    rollback = store.update_for("v1", parent_version="v2")
    assert (rollback.version, rollback.sha256, rollback.artifact_uri) == ("v1", first.sha256, first.artifact_uri)
    with pytest.raises(ArtifactError, match="no artifact version v7"):
        store.update_for("v7", parent_version="v2")


def test_a_bad_update_is_skipped_by_adopt_and_counted_not_fatal(make_model, store, tmp_path, caplog):
    import dataclasses

    trainer = trainer_for(make_model(), store, max_regression=0.0)
    good = store.publish(make_model(), version="v2", parent_version="v1", metrics={},
                         backbone_id=trainer.backbone_id)
    elsewhere = ArtifactStore(tmp_path / "elsewhere", signing_key=b"k" * 32)
    outside = elsewhere.publish(make_model(seed=4), version="v3", parent_version="v1", metrics={},
                                backbone_id=trainer.backbone_id)
    hostile = [outside,  # validly signed, but not in this trainer's store
               dataclasses.replace(good, signature=None),
               dataclasses.replace(good, backbone_id="0" * 64),
               dataclasses.replace(good, version="v9", artifact_uri=store.uri("v9"))]
    before = {k: v.clone() for k, v in trainer.model.adapt_state_dict().items()}
    assert [trainer.adopt(update) for update in hostile] == [False] * 4
    assert trainer.version == "v1" and trainer.rejected_updates == 4
    assert all((before[k] == v).all() for k, v in trainer.model.adapt_state_dict().items())
    assert "rejected adapter v3 (path)" in caplog.text
    assert trainer.adopt(good) and trainer.version == "v2"


def test_trainer_state_is_bounded_however_many_users_producers_invent(make_model, store):
    import dataclasses

    trainer = trainer_for(make_model(), store, max_regression=0.0)
    trainer.cfg = dataclasses.replace(trainer.cfg, max_users=100, max_fresh_examples=50, every_events=10)
    trainer.__init__(trainer.cfg, trainer.model, backbone_id=trainer.backbone_id, version="v1", store=store)
    for n in range(5000):  # 2,500 one-off users, two events each
        for event in clicks(f"user-{n // 2}", [str(n)]):
            trainer.observe(dataclasses.replace(event, event_id=f"e{n}"))
    assert len(trainer.histories) == 100 and trainer.forgotten_users == 2400
    assert len(trainer.fresh) == 50 and trainer.fresh[-1].user_id == "user-2499"
    trainer.observe(clicks("user-2400", ["x"])[0])  # the oldest user, active again ...
    trainer.observe(clicks("newcomer", ["y"])[0])  # ... so the next oldest makes room
    assert "user-2400" in trainer.histories and "user-2401" not in trainer.histories


def test_ties_count_against_the_model_so_constant_scores_get_one_over_n(make_model, features, monkeypatch):
    from model_worker import trainer as trainer_module
    from model_worker.trainer import FreshEvent, direct_mrr

    monkeypatch.setattr(trainer_module.Reranker, "score",
                        lambda self, requests, features=None: [[0.0] * len(r.candidates) for r in requests])
    examples = [FreshEvent("u1", ("1", "2"), "3"), FreshEvent("u2", ("4",), "5")]
    assert direct_mrr(make_model(), examples, features, sorted(features), candidates=20, seed=0) == pytest.approx(1 / 20)


def test_a_round_that_cannot_rank_is_rejected_even_at_zero_margin(make_model, store, features, monkeypatch):
    """The candidate scores every item alike (as if tuning destroyed it); the current model does not."""
    from model_worker import trainer as trainer_module

    trainer = trainer_for(make_model(), store, max_regression=0.0)
    real_score = trainer_module.Reranker.score

    def score(self, requests, features=None):
        if trainer.slots.active == trainer_module.CANDIDATE_SLOT:
            return [[0.0] * len(r.candidates) for r in requests]
        return real_score(self, requests, features)

    monkeypatch.setattr(trainer_module.Reranker, "score", score)
    for user in ("u1", "u2"):
        for event in clicks(user, [str(i) for i in range(1, 8)]):
            trainer.observe(event)
    assert trainer.round(features, sorted(features)) is None
    assert store.manifests() == [] and trainer.version == "v1" and trainer.rejected_rounds == 1
    assert trainer.slots.names() == ["v1"]


def test_a_round_trains_a_named_copy_of_the_adapters_not_a_copy_of_the_model(make_model, store, features):
    trainer = trainer_for(make_model(), store, max_regression=10.0)
    backbone = {n: p.data_ptr() for n, p in trainer.model.named_parameters()
                if not trainer.model.trainable_in("adapt", n)}
    model = trainer.model
    for event in clicks("u1", [str(i) for i in range(1, 9)]):
        trainer.observe(event)
    update = trainer.round(features, sorted(features))
    assert update is not None and trainer.model is model and trainer.slots.names() == ["v2"]
    assert backbone == {n: p.data_ptr() for n, p in model.named_parameters() if not model.trainable_in("adapt", n)}
