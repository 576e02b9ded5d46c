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


def trainer_for(model, store, *, max_regression: float, **config) -> AdapterTrainer:
    cfg = TrainerConfig(model_dir="unused", every_events=10, min_events=4, max_regression=max_regression,
                        tune=TuneConfig(steps=2, batch_size=4, warmup_steps=1), **config)
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
    assert trainer.metrics.adapter_rejections._value.get() == 4  # scraped at /metrics with --metrics-port
    assert trainer.adopt(good) and trainer.version == "v2"
    assert trainer.metrics.adapter_version.labels(version="v2")._value.get() == 1
    assert trainer.metrics.adapter_swaps._value.get() == 1


def test_the_trainer_keeps_at_most_max_users_histories_forgetting_the_least_recently_active_first(
        make_model, store):
    trainer = trainer_for(make_model(), store, max_regression=0.0, max_users=100)
    for n in range(5000):  # a producer inventing users: 2,500 of them, two events each
        trainer.observe(Interaction(event_id=f"e{n}", user_id=f"user-{n // 2}", item_id=str(n), kind="click",
                                    event_time_ms=n))
        assert len(trainer.histories) <= 100
    assert list(trainer.histories)[0] == "user-2400" and trainer.forgotten_users == 2400
    trainer.observe(clicks("user-2400", ["x"])[0])  # the oldest user, active again ...
    trainer.observe(clicks("newcomer", ["y"])[0])  # ... so the next oldest makes room
    assert "user-2400" in trainer.histories and "user-2401" not in trainer.histories
    assert trainer.histories["user-2400"] == ["4800", "4801", "x"]


def test_fresh_examples_past_max_fresh_examples_drop_the_oldest_first(make_model, store):
    trainer = trainer_for(make_model(), store, max_regression=0.0, max_fresh_examples=50)
    for event in clicks("u1", [str(i) for i in range(201)]):  # 200 examples, no round taken
        trainer.observe(event)
    assert [e.target for e in trainer.fresh] == [str(i) for i in range(151, 201)]


def test_the_trainer_bound_flags_reach_its_config_and_bad_values_name_the_field(monkeypatch):
    from model_worker.trainer_cli import trainer_config
    from vip5.cli import build_parser

    for name in ("VIP5_ADAPTER_SIGNING_KEY", "VIP5_ADAPTER_SIGNING_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    args = build_parser().parse_args(["trainer", "--model-dir", "m", "--max-users", "10",
                                      "--max-fresh-examples", "600"])
    assert (trainer_config(args).max_users, trainer_config(args).max_fresh_examples) == (10, 600)
    with pytest.raises(ValueError, match="max_users"):
        TrainerConfig(model_dir="m", max_users=0)
    with pytest.raises(ValueError, match="max_fresh_examples"):
        TrainerConfig(model_dir="m", every_events=500, max_fresh_examples=100)


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

