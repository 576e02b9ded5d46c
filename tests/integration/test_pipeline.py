"""The whole pipeline against the embedded broker: products and interactions in, exactly one
recommendation per re-rank request out, every recommended item valid, an explanation of each
recommendation's top item on its own topic, bad records dead-lettered."""

import urllib.request

import pytest

from model_worker.vip5model.config import VIP5Config
from model_worker.vip5model.model import VIP5Model
from model_worker.vip5model.tokenizer import build_template_tokenizer
from model_worker.worker import READY_LINE as MODEL_READY
from runtime.kafka import create_topics
from schemas.records import Explanation, Recommendation
from schemas.topics import DEAD_LETTER, EXPLANATIONS, ITEM_EMBEDDINGS, RECOMMENDATIONS, RERANK_REQUESTS
from streams.worker import READY_LINE as STREAMS_READY
from tests.integration.pipeline import (
    click,
    fashion_items,
    publish,
    records_on,
    records_reflecting,
    worker_args,
    worker_env,
)
from vip5.broker import free_port
from vip5.processes import WorkerProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny VIP5 (random weights: this test checks the plumbing, not the ranking quality)."""
    path = tmp_path_factory.mktemp("model") / "vip5-tiny"
    VIP5Model.build(VIP5Config(backbone="tiny"), build_template_tokenizer(), seed=0).save_pretrained(path)
    return path


def test_pipeline_publishes_one_valid_recommendation_per_request(kafka_cfg, topics, tmp_path, model_dir):
    create_topics(kafka_cfg, topics)
    items = fashion_items(20)
    catalogue = {i.item_id for i in items}
    publish(kafka_cfg, topics, items)
    streams = WorkerProcess(worker_args("streams", kafka_cfg, topics, "--data-dir", str(tmp_path / "faust"),
                                        "--image-size", "96", "--candidates", "12"),
                            log_path=tmp_path / "streams.log", env=worker_env(kafka_cfg))
    metrics_port = free_port()
    serve = WorkerProcess(worker_args("serve", kafka_cfg, topics, "--model-dir", str(model_dir), "--top-n", "5",
                                      "--explain", "--metrics-port", str(metrics_port)),
                          log_path=tmp_path / "serve.log", env=worker_env(kafka_cfg))
    with streams, serve:
        assert streams.wait_for_log(STREAMS_READY, 120), (tmp_path / "streams.log").read_text()[-2000:]
        assert serve.wait_for_log(MODEL_READY, 120), (tmp_path / "serve.log").read_text()[-2000:]
        records_on(kafka_cfg, topics, ITEM_EMBEDDINGS, count=len(items))
        clicks = [click(f"e{n}", f"u{n % 4}", items[n % len(items)].item_id) for n in range(12)]
        publish(kafka_cfg, topics, clicks, raw=[("rerank-requests", b"\xc1")])

        requests = records_reflecting(kafka_cfg, topics, RERANK_REQUESTS, [c.event_id for c in clicks])
        recs = records_on(kafka_cfg, topics, RECOMMENDATIONS, count=len(requests), timeout_s=120)
        explanations = records_on(kafka_cfg, topics, EXPLANATIONS, count=len(recs), timeout_s=120)
        letters = records_on(kafka_cfg, topics, DEAD_LETTER, count=1)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            metrics = response.read().decode()

    assert all(isinstance(r, Recommendation) for r in recs)
    assert sorted(r.request_id for r in recs) == sorted(r.request_id for r in requests)  # exactly one each
    by_request = {r.request_id: r for r in requests}
    for rec in recs:
        request = by_request[rec.request_id]
        items_out = [i.item_id for i in rec.items]
        assert len(items_out) == 5 and len(set(items_out)) == 5
        assert set(items_out) <= {c.item_id for c in request.candidates} <= catalogue
        assert [i.score for i in rec.items] == sorted((i.score for i in rec.items), reverse=True)
        assert rec.model_version.startswith("vip5-tiny-") and rec.adapter_version == "v1"
        assert rec.event_time_ms <= rec.request_time_ms <= rec.publish_time_ms
    assert all(isinstance(e, Explanation) for e in explanations)
    assert sorted(e.request_id for e in explanations) == sorted(r.request_id for r in recs)  # one per recommendation
    by_rec = {r.request_id: r for r in recs}
    for explanation in explanations:
        rec = by_rec[explanation.request_id]
        assert (explanation.user_id, explanation.item_id) == (rec.user_id, rec.items[0].item_id)  # the top item
        assert (explanation.model_version, explanation.adapter_version) == (rec.model_version, rec.adapter_version)
        assert explanation.publish_time_ms >= rec.publish_time_ms  # it follows the recommendation
    assert {e for r in recs for e in r.event_ids} == {c.event_id for c in clicks}  # every interaction reflected
    assert [d.source_topic for d in letters] == [topics.prefix + "rerank-requests"]
    assert letters[0].raw == b"\xc1" and "msgpack" in letters[0].reason
    assert 'vip5_dead_letters_total{stage="decode"} 1.0' in metrics
    assert f'vip5_records_out_total{{topic="{topics.prefix}recommendations"}} {float(len(recs))}' in metrics
    assert f'vip5_records_out_total{{topic="{topics.prefix}explanations"}} {float(len(explanations))}' in metrics
