import numpy as np
import pytest

from model_worker.rerank import RerankConfig, Reranker, ScoringRequest, rank


def _requests():
    rng = np.random.default_rng(0)
    return [ScoringRequest(str(u), tuple(str(i) for i in range(1, 6)),
                          tuple(str(i) for i in rng.choice(np.arange(10, 5000), 30, replace=False)))
            for u in range(3)]


def test_exact_and_naive_rerank_agree_per_candidate(make_model, features):
    reranker = Reranker(make_model(), features, RerankConfig(max_batch_requests=2))
    requests = _requests()
    exact, naive = reranker.score(requests), reranker.score_naive(requests)
    assert [len(s) for s in exact] == [30, 30, 30]
    for e, n, request in zip(exact, naive, requests, strict=True):
        assert np.allclose(e, n, atol=1e-4)
        assert rank(request.candidates, e) == rank(request.candidates, n)


def test_retrieval_scores_are_blended_by_weight(make_model, features):
    model = make_model()
    request = _requests()[0]
    with_retrieval = ScoringRequest(request.user_id, request.history, request.candidates,
                                   tuple(float(i) for i in range(30)))
    base = Reranker(model, features, RerankConfig(retrieval_weight=0.0)).score([with_retrieval])[0]
    blended = Reranker(model, features, RerankConfig(retrieval_weight=0.5)).score([with_retrieval])[0]
    assert np.allclose(np.array(blended) - np.array(base), 0.5 * np.arange(30), atol=1e-6)
    # without retrieval scores (no retriever upstream) the weight changes nothing
    assert Reranker(model, features).score([request])[0] == pytest.approx(base, abs=1e-6)


def test_the_ranker_scores_with_the_candidates_affinity_those_without_one_at_the_lowest():
    from model_worker.ranker import affinities
    from schemas.records import Candidate

    def cand(item, affinity):
        return Candidate(item_id=item, score=1.0, source="covisit", affinity=affinity)

    assert affinities([cand("a", 2.0), cand("b", None), cand("c", -1.5)]) == (2.0, -1.5, -1.5)
    assert affinities([cand("a", None), cand("b", None)]) is None  # no retriever upstream: the model alone


def test_beam_returns_candidates_only(make_model, features):
    request = _requests()[1]
    top = Reranker(make_model(), features).beam([request], num_beams=5)[0]
    assert top and set(top) <= set(request.candidates)


def test_bad_requests_and_configs_are_refused():
    with pytest.raises(ValueError, match="candidates"):
        ScoringRequest("1", (), ())
    with pytest.raises(ValueError, match="retrieval_scores"):
        ScoringRequest("1", (), ("2", "3"), (1.0,))
    with pytest.raises(ValueError, match="template_id"):
        RerankConfig(template_id="A-1")
    with pytest.raises(ValueError, match="retrieval_weight"):
        RerankConfig(retrieval_weight=-1.0)


def test_one_reranker_scores_with_the_features_given_per_call(make_model, features):
    reranker = Reranker(make_model())
    request = _requests()[0]
    assert np.allclose(reranker.score([request], features)[0], Reranker(reranker.model, features).score([request])[0])
