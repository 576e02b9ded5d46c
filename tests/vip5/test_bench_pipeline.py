"""--find-max bisects towards the highest rate whose runs stay bounded (no broker needed)."""

from vip5.bench_pipeline import find_max, is_bounded


def fake_run(capacity_per_s: float):
    def run_at(rate: float) -> dict:
        overloaded = rate > capacity_per_s
        return {"rate_per_s": rate, "events": 10, "reflected": 10, "freshness_p99_ms": 5000.0 if overloaded else 80.0}
    return run_at


def test_find_max_converges_below_the_capacity():
    best, runs = find_max(fake_run(30.0), hi_per_s=100.0, steps=7, p99_bound_ms=1000.0)
    assert 28.0 <= best <= 30.0 and len(runs) == 7
    assert all(run["bounded"] == (run["rate_per_s"] <= 30.0) for run in runs)


def test_a_run_that_loses_events_is_not_bounded():
    def losing(rate: float) -> dict:
        return {"rate_per_s": rate, "events": 10, "reflected": 9, "freshness_p99_ms": 10.0}
    best, _ = find_max(losing, hi_per_s=50.0, steps=3, p99_bound_ms=1000.0)
    assert best == 0.0


def test_without_a_bound_a_rate_is_sustainable_while_freshness_does_not_grow():
    steady = {"events": 10, "reflected": 10, "freshness_p99_ms": 4000.0, "freshness_p50_ms_by_half": [2000.0, 2300.0]}
    building = {**steady, "freshness_p50_ms_by_half": [2000.0, 6000.0]}
    assert is_bounded(steady, p99_bound_ms=None) and not is_bounded(building, p99_bound_ms=None)


def test_the_bench_model_of_the_default_recipe_has_one_token_per_catalogue_item_and_ranks(tmp_path):
    from vip5.bench_pipeline import build_bench_model, raw_rerank_rate

    items = [f"item{n}" for n in range(30)]
    model_dir = build_bench_model(tmp_path / "model", preset="tiny", item_ids=items, user_ids=["user0"],
                                  feature_dim=8, kind="tokens")
    from model_worker.vip5model.model import VIP5Model

    model = VIP5Model.from_pretrained(model_dir)
    assert model.item_tokens is not None and model.item_vocabulary.keys == items
    assert raw_rerank_rate(model_dir, items, candidates=10, batch=4, requests=8, prompt_history_len=5,
                           feature_dim=8) > 0
