"""Incremental adapter updates against the embedded broker: the trainer learns from a shifting
stream and publishes version 2 because it ranks the held-out clicks better (a round that cannot is
rejected: tests/model_worker/test_trainer.py); the model worker swaps it in while requests flow, rejects a
corrupted artifact, and follows a rollback; no request is lost along the way."""

import random
import shutil
import subprocess
import sys
import time

import pytest

from model_worker.artifacts import ArtifactStore
from model_worker.vip5model.config import VIP5Config
from model_worker.vip5model.model import VIP5Model
from model_worker.vip5model.tokenizer import build_template_tokenizer
from schemas.codec import encode
from schemas.records import AdapterUpdate, Recommendation
from schemas.topics import ADAPTER_UPDATES, INTERACTIONS, ITEM_EMBEDDINGS, ITEMS, RECOMMENDATIONS
from tests.integration.pipeline import click, fashion_items, records_on, wait_for
from vip5.stack import LocalStack, StackConfig

pytestmark = pytest.mark.integration


def test_trainer_publishes_v2_worker_swaps_rejects_corruption_and_rolls_back(tmp_path):
    items = fashion_items(24)
    shoes, others = items[:12], items[12:]  # the vendored file lists the shoes first
    model_dir = tmp_path / "model"
    VIP5Model.build(VIP5Config(backbone="tiny"), build_template_tokenizer(), seed=0).save_pretrained(model_dir)
    artifacts = tmp_path / "artifacts"
    trainer_args = ("--artifacts-dir", str(artifacts), "--every-events", "30", "--min-events", "10",
                    "--steps", "30")  # default --max-regression 0: a round must not lose held-out MRR
    cfg = StackConfig(work_dir=tmp_path, model_dir=model_dir, topic_prefix="adapt.", partitions=2,
                      image_size=96, candidates=10, trainer_args=trainer_args)
    rng = random.Random(0)
    sent = []

    def stream(stack, products, n):
        for _ in range(n):
            event = click(f"e{len(sent)}", f"u{len(sent) % 6}", rng.choice(products).item_id)
            stack.send(INTERACTIONS, event.user_id, encode(event))
            sent.append(event)
        stack.flush()

    def recs(stack):
        return [r for r in records_on(stack.kafka, stack.topics, RECOMMENDATIONS, count=len(sent), timeout_s=5)
                if isinstance(r, Recommendation)]

    def updates(stack):
        return records_on(stack.kafka, stack.topics, ADAPTER_UPDATES, count=100, timeout_s=3)

    with LocalStack(cfg) as stack:
        for product in items:
            stack.send(ITEMS, product.item_id, encode(product))
        stack.flush()
        records_on(stack.kafka, stack.topics, ITEM_EMBEDDINGS, count=len(items))

        stream(stack, others, 20)  # yesterday's taste ...
        stream(stack, shoes, 30)  # ... shifts to shoes
        v2 = wait_for(lambda: next((u for u in updates(stack) if u.version == "v2"), None), 240, "version 2")
        assert v2.parent_version == "v1" and {"holdout_mrr_before", "holdout_mrr_after"} <= set(v2.metrics)
        # the stream shifted to shoes: tuning on it ranks the held-out (newest) clicks better
        assert v2.metrics["holdout_mrr_after"] > v2.metrics["holdout_mrr_before"], v2.metrics
        assert [m["version"] for m in ArtifactStore(artifacts).manifests()] == ["v1", "v2"]

        stream(stack, shoes, 10)  # requests keep flowing through the swap
        wait_for(lambda: any(r.adapter_version == "v2" for r in recs(stack)), 120, "a recommendation from v2")

        # A corrupted artifact is announced: rejected, v2 keeps serving.
        bad_dir = artifacts / "v99"
        shutil.copytree(artifacts / "v2", bad_dir)
        (bad_dir / "adapter.safetensors").write_bytes(b"corrupt" + (bad_dir / "adapter.safetensors").read_bytes()[7:])
        bad = AdapterUpdate(version="v99", parent_version="v2", artifact_uri=bad_dir.as_uri(), sha256=v2.sha256,
                            backbone_id=v2.backbone_id, created_time_ms=int(time.time() * 1000))
        stack.send(ADAPTER_UPDATES, "adapter", encode(bad))
        stack.flush()
        log = stack.workers["model-worker"].log_path
        wait_for(lambda: "rejected adapter v99" in log.read_text(), 60, "the rejection")
        stream(stack, shoes, 6)
        wait_for(lambda: len({e for r in recs(stack) for e in r.event_ids}) == len(sent), 120, "every request served")
        assert recs(stack)[-1].adapter_version == "v2"

        rollback = subprocess.run(
            [sys.executable, "-m", "vip5.cli", "adapters", "rollback", "v1", "--json", "--bootstrap",
             stack.kafka.bootstrap_servers, "--topic-prefix", "adapt.", "--artifacts-dir", str(artifacts)],
            capture_output=True, text=True, timeout=120)
        assert rollback.returncode == 0, rollback.stderr[-2000:]
        wait_for(lambda: "now serving adapter v1" in log.read_text(), 60, "the rollback swap")
        stream(stack, shoes, 6)
        final = wait_for(lambda: (r := recs(stack)) and len({e for x in r for e in x.event_ids}) == len(sent) and r,
                         120, "requests after the rollback")

    served = {e for r in final for e in r.event_ids}
    assert served == {e.event_id for e in sent}  # no request lost across swaps, rejection and rollback
    assert {r.adapter_version for r in final} == {"v1", "v2"}
    assert any(r.adapter_version == "v1" for r in final[-6:])
