"""The artifact store against a hostile adapter-updates writer: only signed versions inside the
store load, whatever the update's URI, version or checksum say."""

import dataclasses
import shutil

import pytest

from model_worker.artifacts import ArtifactError, ArtifactStore, load_verified
from model_worker.vip5model.checkpoint import backbone_sha256
from runtime.signing import signing_key_from_env

KEY = b"trainer-key-0123456789abcdef"


@pytest.fixture
def published(make_model, tmp_path):
    """A store holding v2, signed, and a second store elsewhere on disk with a validly built v2."""
    model = make_model()
    model.set_stage("adapt")
    backbone = backbone_sha256(model)
    store = ArtifactStore(tmp_path / "store", signing_key=KEY)
    update = store.publish(model, version="v2", parent_version="v1", metrics={}, backbone_id=backbone)
    elsewhere = ArtifactStore(tmp_path / "elsewhere", signing_key=KEY)
    foreign = elsewhere.publish(make_model(seed=5), version="v2", parent_version="v1", metrics={},
                                backbone_id=backbone)
    return store, update, backbone, elsewhere, foreign


def test_a_signed_update_inside_the_store_loads(published):
    store, update, backbone, _, _ = published
    assert load_verified(update, backbone_id=backbone, store=store).tensors


@pytest.mark.parametrize("uri", ["{elsewhere}/v2", "file://{elsewhere}/v2", "{store}/../elsewhere/v2",
                                 "file://{store}/../elsewhere/v2", "file://host{store}/v2", "../v2", "v2",
                                 "http://x{store}/v2", "file://{store}/v2?x", "{store}/v2\x00",
                                 "{store}/v3"])
def test_an_artifact_uri_other_than_store_slash_version_is_refused(published, uri):
    store, update, backbone, elsewhere, _ = published
    hostile = dataclasses.replace(update, artifact_uri=uri.format(store=store.root, elsewhere=elsewhere.root))
    with pytest.raises(ArtifactError, match="artifact URI") as info:
        load_verified(hostile, backbone_id=backbone, store=store)
    assert info.value.kind == "path"


@pytest.mark.parametrize("version", ["../v2", "v2/..", "latest", "v0", "V2", "v2 ", "v01"])
def test_versions_of_another_shape_are_refused(published, version):
    store, update, backbone, _, _ = published
    hostile = dataclasses.replace(update, version=version, artifact_uri=f"{store.root}/{version}")
    with pytest.raises(ArtifactError, match="is not of the form v<N>"):
        load_verified(hostile, backbone_id=backbone, store=store)


def test_a_version_directory_or_file_that_is_a_symlink_is_refused(published):
    store, update, backbone, elsewhere, foreign = published
    (store.root / "v3").symlink_to(elsewhere.root / "v2")
    hostile = dataclasses.replace(foreign, version="v3", artifact_uri=store.uri("v3"))
    with pytest.raises(ArtifactError, match="symlink") as info:
        load_verified(hostile, backbone_id=backbone, store=store)
    assert info.value.kind == "path"
    weights = store.root / "v2" / "adapter.safetensors"
    weights.unlink()
    weights.symlink_to(elsewhere.root / "v2" / "adapter.safetensors")
    with pytest.raises(ArtifactError, match="symlink"):
        load_verified(update, backbone_id=backbone, store=store)


def test_unsigned_or_wrongly_signed_updates_are_refused(published):
    store, update, backbone, _, _ = published
    for signature, match in [(None, "unsigned"), ("0" * 64, "signature does not match")]:
        with pytest.raises(ArtifactError, match=match) as info:
            load_verified(dataclasses.replace(update, signature=signature), backbone_id=backbone, store=store)
        assert info.value.kind == "signature"
    other_key = ArtifactStore(store.root, signing_key=b"x" * 32)
    with pytest.raises(ArtifactError, match="signature does not match"):
        load_verified(update, backbone_id=backbone, store=other_key)
    with pytest.raises(ArtifactError, match="no adapter signing key"):
        load_verified(update, backbone_id=backbone, store=ArtifactStore(store.root))


def test_weights_swapped_in_with_a_matching_checksum_are_refused_by_the_signature(published):
    """The attacker's record carries the sha256 of the weights it planted: only the key tells."""
    store, update, backbone, elsewhere, foreign = published
    for name in ("adapter.safetensors", "adapter.json"):
        shutil.copyfile(elsewhere.root / "v2" / name, store.root / "v2" / name)
    with pytest.raises(ArtifactError, match="does not match the signed manifest"):
        load_verified(dataclasses.replace(update, sha256=foreign.sha256), backbone_id=backbone, store=store)
    with pytest.raises(ArtifactError, match="sha256"):
        load_verified(update, backbone_id=backbone, store=store)


def test_an_update_whose_version_differs_from_its_manifest_is_refused(published):
    store, update, backbone, _, _ = published
    shutil.copytree(store.root / "v2", store.root / "v7")  # a copy, signature and all, under another name
    hostile = dataclasses.replace(update, version="v7", artifact_uri=store.uri("v7"))
    with pytest.raises(ArtifactError, match="does not match the signed manifest .*'v2'"):
        load_verified(hostile, backbone_id=backbone, store=store)


def test_rollback_carries_the_trainers_signature_without_the_key(published):
    store, update, backbone, _, _ = published
    rollback = ArtifactStore(store.root).update_for("v2", parent_version="v3")  # the operator has no key
    assert rollback.signature == update.signature
    assert load_verified(rollback, backbone_id=backbone, store=store).tensors


def test_publishing_needs_the_key_and_a_version_of_the_expected_shape(make_model, tmp_path):
    model = make_model()
    with pytest.raises(ArtifactError, match="no adapter signing key"):
        ArtifactStore(tmp_path).publish(model, version="v2", parent_version=None, metrics={}, backbone_id="b")
    with pytest.raises(ArtifactError, match="v<N>"):
        ArtifactStore(tmp_path, signing_key=KEY).publish(model, version="../v2", parent_version=None, metrics={},
                                                         backbone_id="b")


def test_the_signing_key_comes_from_the_environment_or_a_mounted_file(tmp_path):
    secret = tmp_path / "adapter-signing-key"
    secret.write_text("from-a-file-0123456789\n")
    assert signing_key_from_env({"VIP5_ADAPTER_SIGNING_KEY": "k" * 20}) == b"k" * 20
    assert signing_key_from_env({"VIP5_ADAPTER_SIGNING_KEY_FILE": str(secret)}) == b"from-a-file-0123456789"
    assert signing_key_from_env({"VIP5_ADAPTER_SIGNING_KEY": ""}) is None
    with pytest.raises(ValueError, match="at least 16 bytes"):
        signing_key_from_env({"VIP5_ADAPTER_SIGNING_KEY": "short"})
    with pytest.raises(ValueError, match="not both"):
        signing_key_from_env({"VIP5_ADAPTER_SIGNING_KEY": "k" * 20, "VIP5_ADAPTER_SIGNING_KEY_FILE": str(secret)})
