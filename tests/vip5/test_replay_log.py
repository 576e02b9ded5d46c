"""The replay's test users are the users `vip5 evaluate` scores with the same seed and count, so the
streaming and offline numbers of a model compare on the same people."""

from pathlib import Path

from model_worker.offline.data import DataConfig, load_data
from model_worker.offline.evaluate import EvalConfig, make_context
from vip5.replay_log import build_log

SLICE = Path(__file__).resolve().parents[1] / "data" / "beauty_slice"


def test_replay_and_offline_evaluation_sample_the_same_test_users():
    data = load_data(DataConfig(str(SLICE)))
    replay = build_log(data, users=60, seed=3)
    offline = make_context(data, EvalConfig(max_users=60, sample_seed=3, baselines=()))
    assert sorted(u.user for u in replay.test) == sorted(data.user_keys[e.user - 1] for e in offline.examples)
    assert len({u.user for u in replay.test}) == 60
    assert [u.user for u in build_log(data, users=60, seed=4).test] != [u.user for u in replay.test]
