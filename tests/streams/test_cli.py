"""`vip5 streams` flags become a valid StreamsConfig."""

import pytest

from streams.cli import streams_config
from vip5.cli import build_parser


@pytest.mark.parametrize("k", [1, 5, 20, 100, 300])
def test_every_candidates_count_gives_valid_slots_with_co_visitation_first(k):
    args = build_parser().parse_args(["streams", "--candidates", str(k)])
    config = streams_config(args).candidates
    assert config.k == k and config.covisit_k + config.popular_k + config.fresh_k <= k
    assert config.covisit_k == min(50, k // 2)
