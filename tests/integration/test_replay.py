"""`vip5 bench replay` through the real broker and worker processes, on a slice of Amazon Beauty:
every test user gets a recommendation, the published lists beat popularity on the same users, and
the run's retriever, published on its topics, feeds the candidates."""

import time
from pathlib import Path

import pytest

from vip5.cli import build_parser

pytestmark = pytest.mark.integration
SLICE = Path(__file__).resolve().parents[1] / "data" / "beauty_slice"
USERS = 300


@pytest.fixture(scope="session")
def slice_run(tmp_path_factory) -> Path:
    """The default recipe on the slice for about a minute, once per session: the retriever first
    (saved in <run>/retriever), then the item-token VIP5 started from its item vectors."""
    from model_worker.offline.data import DataConfig
    from model_worker.offline.tasks import TaskConfig
    from model_worker.offline.train import TrainConfig, train

    out = tmp_path_factory.mktemp("slice-run")
    config = TrainConfig(out_dir=str(out), content="none", stages=("pretrain",), pretrain_steps=300,
                         time_budget_s=75, validate_every_s=1e9, threads=1)
    train(DataConfig(str(SLICE)), TaskConfig(), config)
    return out


def test_a_replayed_slice_recommends_to_every_test_user_and_beats_popularity(slice_run):
    args = build_parser().parse_args(["bench", "replay", "--data", str(SLICE), "--model-dir", str(slice_run),
                                      "--users", str(USERS), "--timeout", "240", "--json"])
    started = time.monotonic()
    result = args.handler(args)
    elapsed = time.monotonic() - started
    assert result["users_with_recommendation"] == USERS, result
    assert result["replay"]["n_users"] == result["popularity"]["n_users"] == USERS
    assert result["replay"]["hr@10"] > result["popularity"]["hr@10"], result
    assert set(result["recall_at_100"]) == {"covisit", "sequential", "visual", "popular", "fresh", "all"}
    # the run's own retriever was published, reached the streams worker through its topics and fed the candidates
    assert result["retriever"]["vectors"] > 0 and result["recall_at_100"]["sequential"] > 0, result
    assert result["events_per_s"] > 0 and result["freshness_p99_ms"] >= result["freshness_p50_ms"] > 0
    assert elapsed < 240, elapsed
