"""`vip5 bench replay --data DIR --model-dir RUN --json`: the running system's quality on a real log.

    catalogue ──► items (ItemUpsert: title, category)            ──► streams: text content vectors
    training interactions ──► interactions, header vip5-backfill ──► streams: histories, popularity,
                                                                      co-visitation; no request
    each test user's validation interaction ──► interactions     ──► rerank-requests ──► model worker
                                                                  ──► recommendations (compared with
                                                                      the user's held-out last item)

The real stack (embedded broker, `vip5 streams`, `vip5 serve`, with `--trainer` also `vip5
trainer`) as separate processes, as in production. Training interactions are marked backfill
(`schemas.headers`), a documented feature of the streams worker for importing a past log: they
build state exactly like live ones but ask for no recommendation, so the replay costs one model
call per test user instead of one per interaction. Test events go out once the streams worker has
committed every training interaction, so each test user's candidates see the whole training log.

Reported (one JSON object): `replay` (the published lists: HR@10, NDCG@10 over the whole
catalogue, a missing recommendation or a target outside the list is a miss), `candidates_order`
(the request's candidates in their own order), `markov` and `popularity` (in-process, fitted on
the same training interactions, the same users), `recall_at_100` (the requests' candidates per
source and `all`), `events_per_s` (all replayed interactions over the replay's wall time),
`freshness_p50_ms`/`_p99_ms` (test recommendations: publish time minus event time, with all test
events published at once), and with `--trainer`, `halves` (replay metrics of the first and second
half of the test users in replay order). The catalogue predates the log (its event times are 30
days back), so no item takes a `fresh` slot. --report DIR: also DIR/index.html (vip5.report): the
test recommendations' freshness and adapter versions, replay HR@10 next to the candidates' own order,
markov and popularity, and a few lists as item titles (the log's catalogue has no photos here).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from runtime.cli import add_command

log = logging.getLogger(__name__)
CATALOGUE_AGE_MS = 30 * 86400 * 1000


def load_replay_data(data_path: str, model_dir: Path):
    """The data with the numbering the model was trained with (item titles must match its texts)."""
    from model_worker.offline.data import DataConfig, load_data
    from model_worker.offline.evaluate import trained_data_config

    try:
        config = replace(trained_data_config(model_dir), path=data_path)
    except FileNotFoundError:
        config = DataConfig(path=data_path)
    return load_data(config)


def replay_retriever(asked: str | None, model_dir: Path) -> Path | None:
    """The retriever folder to publish: the one asked for, none for "none", else the run's own
    (`vip5 train --item-init retriever` saves it in <run>/retriever) when it has one."""
    from model_worker.offline.runs import RETRIEVER_DIR, run_dirs

    if asked is not None:
        return None if asked == "none" else Path(asked)
    own = run_dirs(model_dir)[0] / RETRIEVER_DIR
    return own if own.is_dir() else None


def publish_catalogue(stack, data, *, timeout_s: float) -> int:
    from runtime.kafka import read_topic
    from schemas.codec import encode
    from schemas.limits import LIMITS
    from schemas.records import ItemUpsert
    from schemas.topics import ITEM_EMBEDDINGS, ITEMS

    added = int(time.time() * 1000) - CATALOGUE_AGE_MS
    for item, key in enumerate(data.item_keys, start=1):
        upsert = ItemUpsert(item_id=key, title=data.title(item)[:LIMITS.max_title_len],
                            category=data.category(item)[:LIMITS.max_title_len],
                            event_time_ms=added)
        stack.send(ITEMS, key, encode(upsert))
    stack.flush()
    seen = read_topic(stack.kafka, stack.topics.name(ITEM_EMBEDDINGS), timeout_s=timeout_s,
                      until=lambda ms: len(ms) >= data.n_items)
    return len(seen)


def publish_backfill(stack, train, *, timeout_s: float) -> None:
    """Every training interaction, history only; returns once the streams worker committed them all."""
    from kafka import TopicPartition

    from runtime.kafka import consumer, producer
    from schemas.codec import encode
    from schemas.headers import backfill_headers
    from schemas.records import Interaction
    from schemas.topics import INTERACTIONS

    topic, last = stack.topics.name(INTERACTIONS), {}
    client = producer(stack.kafka, linger_ms=20, batch_size=262144)
    first_ms = int(time.time() * 1000) - len(train)  # 1 ms apart, ending now: popularity barely decays

    def note(metadata):
        last[metadata.partition] = max(last.get(metadata.partition, -1), metadata.offset)

    for n, (user, item) in enumerate(train):
        event = Interaction(event_id=f"t{n}", user_id=user, item_id=item, kind="purchase", event_time_ms=first_ms + n)
        client.send(topic, key=user.encode(), value=encode(event), headers=backfill_headers()).add_callback(note)
    client.flush()
    client.close()
    group = consumer(stack.kafka, f"{stack.topics.prefix}streams")  # the streams app id: its commits
    deadline, behind = time.monotonic() + timeout_s, dict(last)
    try:
        while behind and time.monotonic() < deadline:
            time.sleep(1.0)
            behind = {p: o for p, o in last.items() if (group.committed(TopicPartition(topic, p)) or 0) <= o}
    finally:
        group.close()
    if behind:
        raise TimeoutError(f"streams worker did not commit the training interactions within {timeout_s:.0f} s: {behind}")


def collect(stack, spec, record_type, stop: threading.Event, into: list, group: str) -> threading.Thread:
    from runtime.kafka import consumer
    from schemas.codec import decode

    def run():
        client = consumer(stack.kafka, group, [stack.topics.name(spec)], enable_auto_commit=True,
                          fetch_max_wait_ms=100)
        try:
            while not stop.is_set():
                for records in client.poll(timeout_ms=200).values():
                    into.extend(decode(m.value, record_type) for m in records)
        finally:
            client.close()

    thread = threading.Thread(target=run, daemon=True, name=f"collect-{spec.base_name}")
    thread.start()
    return thread


def run_replay(data, replay_log, stack_cfg, *, timeout_s: float, retriever_dir: Path | None = None) -> dict:
    from schemas.codec import encode
    from schemas.records import Interaction, Recommendation, RerankRequest
    from schemas.topics import INTERACTIONS, RECOMMENDATIONS, RERANK_REQUESTS
    from vip5.stack import LocalStack

    recs, requests, stop = [], [], threading.Event()
    with LocalStack(stack_cfg) as stack:
        started = time.monotonic()
        embedded = publish_catalogue(stack, data, timeout_s=timeout_s)
        catalogue_s = time.monotonic() - started
        log.info("catalogue: %d embeddings in %.0f s", embedded, catalogue_s)
        retriever = None
        if retriever_dir is not None:
            from index.retriever import publish_retriever

            retriever = publish_retriever(retriever_dir, stack.send, signing_key=stack.signing_key)
            stack.flush()
            log.info("retriever %s: %d item vectors published", retriever["version"], retriever["vectors"])
        threads = [collect(stack, RECOMMENDATIONS, Recommendation, stop, recs, "replay-recs"),
                   collect(stack, RERANK_REQUESTS, RerankRequest, stop, requests, "replay-requests")]
        time.sleep(2 * stack.kafka.session_timeout_ms / 1000)  # the collectors join their groups
        replay_started = time.monotonic()
        publish_backfill(stack, replay_log.train, timeout_s=timeout_s)
        backfill_s = time.monotonic() - replay_started
        log.info("backfill: %d interactions committed in %.0f s", len(replay_log.train), backfill_s)
        for user in replay_log.test:
            event = Interaction(event_id=f"v-{user.user}", user_id=user.user, item_id=user.history[-1],
                                kind="purchase", event_time_ms=int(time.time() * 1000))
            stack.send(INTERACTIONS, user.user, encode(event))
        stack.flush()
        wanted, deadline = {f"v-{u.user}" for u in replay_log.test}, time.monotonic() + timeout_s
        while time.monotonic() < deadline and not wanted <= {e for r in list(recs) for e in r.event_ids}:
            time.sleep(0.5)
        replay_s = time.monotonic() - replay_started
        time.sleep(1.0)  # the request collector trails the recommendations slightly
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    timing = {"catalogue_embedded": embedded, "catalogue_s": round(catalogue_s, 1), "backfill_s": round(backfill_s, 1),
              "test_phase_s": round(replay_s - backfill_s, 1), "replay_s": round(replay_s, 1),
              "events_per_s": round((len(replay_log.train) + len(replay_log.test)) / replay_s, 1)}
    return {"recommendations": recs, "requests": requests, "timing": timing, "retriever": retriever}


def score(data, replay_log, recs, requests, *, seed: int, halves: bool) -> dict:
    from index.candidates import MERGE_ORDER
    from vip5.replay_log import baseline_metrics, candidate_recall, list_metrics

    by_event = {e: r for r in recs for e in r.event_ids}
    request_by_event = {e: r for r in requests for e in r.event_ids}
    test, targets = replay_log.test, [u.target for u in replay_log.test]
    published = [by_event.get(f"v-{u.user}") for u in test]
    lists = [None if r is None else [i.item_id for i in r.items] for r in published]
    asked = [request_by_event.get(f"v-{u.user}") for u in test]
    candidates = [None if r is None else [(c.item_id, c.source) for c in r.candidates] for r in asked]
    freshness = np.asarray([r.publish_time_ms - r.event_time_ms for r in published if r is not None] or [0])
    out = {"replay": list_metrics(lists, targets),
           "candidates_order": list_metrics([None if c is None else [i for i, _ in c] for c in candidates], targets),
           **baseline_metrics(data, test, seed=seed),
           "recall_at_100": candidate_recall(candidates, targets, MERGE_ORDER),
           "users_with_recommendation": sum(r is not None for r in published),
           "freshness_p50_ms": float(np.percentile(freshness, 50)),
           "freshness_p99_ms": float(np.percentile(freshness, 99))}
    if halves:
        mid = len(test) // 2
        out["halves"] = [list_metrics(lists[:mid], targets[:mid]), list_metrics(lists[mid:], targets[mid:])]
        out["adapter_versions"] = sorted({r.adapter_version for r in published if r is not None})
    return out


def run_bench_replay(args: argparse.Namespace) -> dict:
    from model_worker.offline.runs import run_dirs
    from vip5.replay_log import build_log
    from vip5.stack import StackConfig

    model_dir = Path(args.model_dir)
    data = load_replay_data(args.data, model_dir)
    review_file = Path(args.data) if Path(args.data).is_file() else None
    replay_log = build_log(data, users=args.users or None, seed=args.seed, review_file=review_file)
    log.info("replay: %d items, %d training interactions (%s), %d test users", data.n_items,
             len(replay_log.train), replay_log.ordered_by, len(replay_log.test))
    with tempfile.TemporaryDirectory(prefix="vip5-replay-") as tmp:
        stack_cfg = StackConfig(
            work_dir=Path(tmp), model_dir=run_dirs(model_dir)[1], topic_prefix="replay.", partitions=args.partitions,
            candidates=args.candidates, prompt_history_len=args.prompt_history_len,
            serve_args=("--max-batch", str(args.max_batch), "--catalogue-k", str(args.catalogue_k),
                        *(("--retrieval-weight", str(args.retrieval_weight)) if args.retrieval_weight is not None
                          else ())),
            # every user of the log keeps its history, as in the offline evaluation it is compared with
            streams_args=("--coalesce-ms", str(args.coalesce_ms),
                          "--max-users", str(max(20_000, len({user for user, _ in replay_log.train}))),
                          *shlex.split(args.streams_args)),
            trainer_args=() if args.trainer else None, start_timeout_s=300.0)
        run = run_replay(data, replay_log, stack_cfg, timeout_s=args.timeout,
                         retriever_dir=replay_retriever(args.retriever, model_dir))
    result = score(data, replay_log, run["recommendations"], run["requests"], seed=args.seed, halves=args.trainer)
    out = {"data": data.name, "n_items": data.n_items, "train_interactions": len(replay_log.train),
           "ordered_by": replay_log.ordered_by, **result, **run["timing"], "retriever": run["retriever"]}
    if args.report:
        out["report"] = write_replay_report(out, data, replay_log, run["recommendations"], Path(args.report))
    return out


def write_replay_report(result: dict, data, replay_log, recs: list, out_dir: Path) -> str:
    from vip5.latency import stages_of
    from vip5.report import CatalogueItem, QualityFigure, ReportData, ServedRecommendation, write_report

    tests = {f"v-{u.user}" for u in replay_log.test}  # only test events ask for a recommendation
    served = [ServedRecommendation.of(r, stages_of(r)) for r in recs if tests & set(r.event_ids)]
    title = {key: data.title(item) for item, key in enumerate(data.item_keys, start=1)}
    quality = QualityFigure(metric="HR@10", values={
        "replay (published lists)": result["replay"]["hr@10"],
        "candidates in request order": result["candidates_order"]["hr@10"],
        **{name: result[name]["hr@10"] for name in ("markov", "popularity") if name in result}},
        note="the same test users: held-out last item in the top 10 (markov and popularity fitted in process "
             "on the same training interactions)")
    report = ReportData(title=f"vip5 bench replay: {data.name}", recommendations=served, summary=result,
                       quality=quality, catalogue={k: CatalogueItem(caption=t) for k, t in title.items()},
                       user_notes={u.user: f"held out: {title.get(u.target, u.target)[:40]}"
                                   for u in replay_log.test})
    index = str(write_report(report, out_dir).index.resolve())
    log.info("report: %s", index)
    return index


def register(commands, bench) -> None:
    p = add_command(bench, "replay", run_bench_replay,
                    "replay a log through the running system; HR/NDCG@10 of the published recommendations")
    p.add_argument("--data", required=True, help="P5/VIP5 folder or a reviews_*_5.json.gz file")
    p.add_argument("--model-dir", required=True, help="run directory from `vip5 train` (or its model/)")
    p.add_argument("--users", type=int, default=5000, help="seeded sample of test users; 0 = all")
    p.add_argument("--seed", type=int, default=0, help="user sample, interleaving and tie-breaking")
    p.add_argument("--trainer", action="store_true", help="run the adapter trainer too; report `halves`")
    p.add_argument("--retriever", default=None, metavar="RDIR",
                   help="publish this `vip5 retriever train` folder before the log: the sequential candidates "
                   "(default: the run's own <model-dir>/retriever when it has one; none: no retriever)")
    p.add_argument("--partitions", type=int, default=3)
    p.add_argument("--candidates", type=int, default=100, help="candidates per re-rank request")
    p.add_argument("--prompt-history-len", type=int, default=20)
    p.add_argument("--max-batch", type=int, default=32, help="model worker batch")
    p.add_argument("--catalogue-k", type=int, default=0,
                   help="item-token models add their best K catalogue items to the candidates (0: re-rank only)")
    p.add_argument("--retrieval-weight", type=float, default=None,
                   help="model worker: weight of the retriever's affinity in the score; 0: the model alone "
                        "(default: vip5 serve's)")
    p.add_argument("--coalesce-ms", type=int, default=50, help="streams worker coalescing window")
    p.add_argument("--streams-args", default="", metavar="ARGS",
                   help="extra `vip5 streams` flags, one string, e.g. --streams-args=--no-content-cold-only")
    p.add_argument("--timeout", type=float, default=1800.0, help="limit of each phase, seconds")
    p.add_argument("--report", default=None, metavar="DIR", help="also write an HTML report with plots to DIR/index.html")
