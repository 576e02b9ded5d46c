"""`vip5 streams` flags become a valid StreamsConfig."""

import pytest

from index.candidates import CandidateConfig
from streams.cli import streams_config
from streams.config import StreamsConfig
from vip5.cli import build_parser


@pytest.mark.parametrize("k", [1, 5, 20, 100, 300])
def test_every_candidates_count_gives_valid_slots_in_the_default_shares(k):
    args = build_parser().parse_args(["streams", "--candidates", str(k)])
    config = streams_config(args).candidates
    assert config.k == k and config.covisit_k + config.sequential_k + config.popular_k + config.fresh_k <= k
    default = CandidateConfig()
    assert config.covisit_k == default.covisit_k * k // default.k
    assert config.sequential_k == default.sequential_k * k // default.k


def test_the_history_bound_flags_reach_the_config_and_bad_values_name_the_field():
    config = streams_config(build_parser().parse_args(["streams", "--max-users", "7", "--user-idle-s", "0"]))
    assert (config.max_users, config.user_idle_s) == (7, 0.0)
    defaults = streams_config(build_parser().parse_args(["streams"]))
    assert (defaults.max_users, defaults.user_idle_s) == (StreamsConfig().max_users, StreamsConfig().user_idle_s)
    with pytest.raises(ValueError, match="max_users"):
        StreamsConfig(max_users=0)
    with pytest.raises(ValueError, match="user_idle_s"):
        StreamsConfig(user_idle_s=-1)


def test_slots_name_each_sources_reserved_count_and_refuse_unknown_sources():
    args = build_parser().parse_args(["streams", "--candidates", "50", "--slots", "covisit=20,sequential=25"])
    config = streams_config(args).candidates
    assert (config.k, config.covisit_k, config.sequential_k, config.popular_k, config.fresh_k) == (50, 20, 25, 0, 0)
    for bad in ("visual=3", "covisit", "covisit=x"):
        with pytest.raises(ValueError, match="--slots"):
            streams_config(build_parser().parse_args(["streams", "--slots", bad]))
    with pytest.raises(ValueError, match="must be <= k=10"):
        streams_config(build_parser().parse_args(["streams", "--candidates", "10", "--slots", "covisit=8,fresh=5"]))


def test_covisit_fusion_defaults_to_the_configs_weight_and_a_negative_one_keeps_fixed_slots():
    parse = build_parser().parse_args
    assert streams_config(parse(["streams"])).candidates.covisit_fusion == CandidateConfig().covisit_fusion == 1.0
    assert streams_config(parse(["streams", "--covisit-fusion", "2.5", "--slots", "covisit=5"])).candidates.covisit_fusion == 2.5
    assert streams_config(parse(["streams", "--covisit-fusion", "-1"])).candidates.covisit_fusion is None


def test_content_neighbours_are_for_items_the_retriever_does_not_know_unless_told_otherwise():
    parse = build_parser().parse_args
    assert streams_config(parse(["streams"])).candidates.content_cold_only is CandidateConfig().content_cold_only is True
    assert streams_config(parse(["streams", "--no-content-cold-only"])).candidates.content_cold_only is False
    assert streams_config(parse(["streams", "--no-content-cold-only", "--slots", "covisit=5"])).candidates.content_cold_only is False


def test_faiss_searches_on_one_thread_unless_told_otherwise():
    """The worker searches one user's query at a time: more OpenMP threads only spin."""
    assert streams_config(build_parser().parse_args(["streams"])).faiss_threads == 1
    assert streams_config(build_parser().parse_args(["streams", "--faiss-threads", "4"])).faiss_threads == 4
    with pytest.raises(ValueError, match="faiss_threads"):
        StreamsConfig(faiss_threads=0)
