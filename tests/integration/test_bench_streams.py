"""`vip5 bench streams` drives a real streams worker through the embedded broker and accounts for
the time of the requests it publishes."""

from collections import Counter

import pytest

from vip5.bench_streams import burst
from vip5.cli import build_parser

pytestmark = pytest.mark.integration


def test_the_streams_bench_reflects_the_burst_and_reports_rates_and_stages():
    args = build_parser().parse_args(["bench", "streams", "--events", "200", "--users", "40", "--json"])
    result = args.handler(args)
    # only a user who has already seen every item known so far gets no candidates: the first user the
    # worker serves, with every event of theirs in its first batch; the default 5 ms coalescing window
    # folds a user's events of one window into one request
    busiest = max(Counter(user for user, _ in burst(200, users=40, items=1000, seed=0)).values())
    assert result["users_unreflected"] <= 1
    assert result["events_reflected"] >= 200 - busiest and 0 < result["requests"] <= result["events_reflected"]
    assert result["requests_per_s"] > 0 and result["seconds"] > 0
    assert set(result["stages"]) == {"wait", "handle"}
    assert all(s["p99_ms"] >= s["p50_ms"] >= 0 for s in result["stages"].values())
