"""The learned retriever in a running streams worker: `vip5 retriever publish` reaches it through
its topics, its items come out as `sequential` candidates, and a newly published version replaces
the old one without a restart, only when signed with the deployment's key."""

import pytest

from index.retriever import save_retriever
from index.sasrec import SASRecConfig, SASRecScorer
from runtime.kafka import create_topics
from runtime.signing import KEY_ENV
from schemas.records import RerankRequest
from schemas.topics import RERANK_REQUESTS
from streams.worker import READY_LINE
from tests.integration.pipeline import click, publish, records_on, wait_for, worker_args, worker_env
from vip5.cli import build_parser
from vip5.processes import WorkerProcess

pytestmark = pytest.mark.integration
N_ITEMS = 40
KEY, OTHER_KEY = "k" * 32, "x" * 32
KEYS = [f"i{j}" for j in range(1, N_ITEMS + 1)]


def retriever(tmp_path, name: str, step: int):
    """SASRec trained on a log where item j is followed by item j + step."""
    starts = [s % (N_ITEMS - 8) + 1 for s in range(300)]
    train = [list(range(s, s + 6)) if step > 0 else list(range(s + 5, s - 1, -1)) for s in starts]
    scorer = SASRecScorer(train, N_ITEMS, SASRecConfig(hidden=16, max_len=8, max_epochs=40, time_budget_s=60,
                                                       lr=1e-2, dropout=0.1))
    folder = tmp_path / name
    save_retriever(scorer.model, KEYS, folder)
    return folder


def publish_retriever(kafka_cfg, topics, folder) -> dict:
    args = build_parser().parse_args(["retriever", "publish", "--dir", str(folder), "--bootstrap",
                                      kafka_cfg.bootstrap_servers, "--topic-prefix", topics.prefix,
                                      "--partitions", str(topics.partitions), "--json"])
    return args.handler(args)


def request_for(kafka_cfg, topics, event_id: str, seen: int) -> RerankRequest | None:
    """The request reflecting `event_id` (None until it exists)."""
    for request in records_on(kafka_cfg, topics, RERANK_REQUESTS, count=seen, timeout_s=5):
        if isinstance(request, RerankRequest) and event_id in request.event_ids:
            return request
    return None


def first_sequential(kafka_cfg, topics, event_id: str, seen: int):
    """The first `sequential` candidate of the request reflecting `event_id` (None until it exists)."""
    request = request_for(kafka_cfg, topics, event_id, seen)
    if request is None:
        return None
    return next((c.item_id for c in request.candidates if c.source == "sequential"), "none")


def test_a_published_retriever_feeds_candidates_and_a_new_signed_version_replaces_it_live(
        broker, kafka_cfg, topics, tmp_path, monkeypatch):
    create_topics(kafka_cfg, topics)
    forward, backward = retriever(tmp_path, "forward", +1), retriever(tmp_path, "backward", -1)
    monkeypatch.setenv(KEY_ENV, KEY)  # `vip5 retriever publish` signs with the deployment's key
    sent = publish_retriever(kafka_cfg, topics, forward)
    assert sent["vectors"] == N_ITEMS and sent["signed"]
    args = worker_args("streams", kafka_cfg, topics, "--data-dir", str(tmp_path / "faust"), "--text-encoder", "none",
                       "--candidates", "20")
    log_path = tmp_path / "streams.log"
    worker = WorkerProcess(args, log_path=log_path, env={**worker_env(kafka_cfg), KEY_ENV: KEY}).start()
    try:
        assert worker.wait_for_log(READY_LINE, 120), (tmp_path / "streams.log").read_text()[-3000:]
        publish(kafka_cfg, topics, [click("a1", "u1", "i19"), click("a2", "u1", "i20")])
        assert wait_for(lambda: first_sequential(kafka_cfg, topics, "a2", 2), 60, "a request") == "i21"
        # the candidates carry the retriever's affinity to the model worker (other sources' too: tests/index)
        request = request_for(kafka_cfg, topics, "a2", 2)
        assert all(c.affinity is not None for c in request.candidates), request.candidates

        monkeypatch.setenv(KEY_ENV, OTHER_KEY)  # someone without the deployment's key
        publish_retriever(kafka_cfg, topics, backward)
        wait_for(lambda: "refusing retriever model" in log_path.read_text(), 60, "the forged model refused")
        publish(kafka_cfg, topics, [click("c1", "w1", "i10")])
        assert wait_for(lambda: first_sequential(kafka_cfg, topics, "c1", 3), 60, "a request") == "i11"  # still forward
        monkeypatch.setenv(KEY_ENV, KEY)
        publish_retriever(kafka_cfg, topics, backward)  # the worker keeps running
        sent = []

        def switched():
            sent.append(f"b{len(sent)}")
            publish(kafka_cfg, topics, [click(sent[-1], f"v{len(sent)}", "i10")])  # never co-visited
            return first_sequential(kafka_cfg, topics, sent[-1], 3 + len(sent)) == "i9"

        assert wait_for(switched, 60, "the new version's candidates")
        assert worker.alive(), "the worker restarted"
    finally:
        worker.stop()
