"""Device session: SRM adapters, reranking the cached list, requests that fail, no lost clicks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from device.fusion import RankSigmoidFusion, SRMOnlyFusion, rerank
from device.policies import NeverPolicy, PeriodicPolicy, RandomPolicy
from device.session import DeviceSession, FetchError, SessionConfig, StatefulRunner
from seqrec.models.sasrec import SASRec, SASRecConfig
from seqrec.models.ttt4rec import TTT4Rec
from seqrec.runners import HistoryRunner, TorchStatefulRunner, make_runner
from shared.candidates import CandidateList

torch.set_num_threads(1)

NUM_ITEMS = 40


@pytest.fixture(scope="module")
def ttt(tiny_ttt4rec) -> TTT4Rec:
    return tiny_ttt4rec(NUM_ITEMS, initializer_range=0.1)


@pytest.fixture(scope="module")
def sasrec() -> SASRec:
    torch.manual_seed(0)
    config = SASRecConfig(num_items=NUM_ITEMS, hidden_size=16, num_heads=2, inner_size=32)
    return SASRec(config).eval()


def candidates(items, version="v1") -> CandidateList:
    items = np.asarray(items, dtype=np.int64)
    return CandidateList(items, -np.arange(len(items), dtype=np.float32), version)


class Cloud:
    """A fake fetch function: records the histories it was sent, fails while told to."""

    def __init__(self) -> None:
        self.sent: list[list[int]] = []
        self.excluded: list[list[int]] = []
        self.failure: str | None = None  # None, "raise", "none", "bug"

    def __call__(self, history: np.ndarray, exclude=()) -> CandidateList | None:
        self.sent.append(history.tolist())
        self.excluded.append(np.asarray(exclude).tolist())
        if self.failure == "raise":
            raise FetchError("UNAVAILABLE")
        if self.failure == "none":
            return None
        if self.failure == "bug":
            raise KeyError("not a network error")
        # a list of the 10 lowest-numbered items the user has not clicked
        consumed = set(history.tolist()) | set(np.asarray(exclude).tolist())
        fresh = [i for i in range(1, NUM_ITEMS + 1) if i not in consumed][:10]
        return candidates(fresh, version=f"after-{len(history)}")


@pytest.mark.parametrize("model_name", ["ttt", "sasrec"])
def test_runner_scores_equal_full_history_scoring(model_name, request):
    model = request.getfixturevalue(model_name)
    runner = make_runner(model)
    assert isinstance(runner, TorchStatefulRunner if model_name == "ttt" else HistoryRunner)
    clicks = [3, 17, 5, 29, 11, 2, 8]
    items = np.array([1, 4, 9, 16, 25, 36])
    state = runner.init_state()
    for click in clicks:
        state = runner.step(state, click)
    with torch.no_grad():
        expected = model.score(torch.tensor([clicks]), torch.as_tensor(items)[None])[0].numpy()
    np.testing.assert_allclose(
        runner.score_items(state, np.array(clicks), items), expected, atol=1e-5
    )


def test_stateful_runner_rejects_models_without_a_state(sasrec):
    with pytest.raises(ValueError, match="no init_state"):
        StatefulRunner(object())
    with pytest.raises(ValueError, match="use HistoryRunner"):
        TorchStatefulRunner(sasrec)
    assert isinstance(make_runner(sasrec), HistoryRunner)


def test_recommend_reranks_the_cached_list_without_history_items(ttt):
    session = DeviceSession(make_runner(ttt), NeverPolicy(), history=[7, 8])
    session.update_candidates(candidates([5, 7, 12, 30, 8, 21]))
    shown = session.recommend(k=10)
    assert sorted(shown.tolist()) == [5, 12, 21, 30]  # 7 and 8 were clicked
    expected = rerank(session.cached.candidates, session.srm_logits(), [7, 8], RankSigmoidFusion())
    assert shown.tolist() == expected.tolist()
    session.observe(12)
    assert 12 not in session.recommend(k=10)
    assert len(session.recommend(k=2)) == 2


def test_srm_only_fusion_follows_the_carried_state(ttt):
    session = DeviceSession(make_runner(ttt), NeverPolicy(), SRMOnlyFusion())
    session.update_candidates(candidates(np.arange(1, 21)))
    session.observe(33)
    logits = session.srm_logits()
    with torch.no_grad():
        direct = ttt.score(torch.tensor([[33]]), torch.arange(1, 21)[None])[0].numpy()
    np.testing.assert_allclose(logits, direct, atol=1e-5)
    assert session.recommend(k=3).tolist() == (np.argsort(-direct, kind="stable")[:3] + 1).tolist()


def test_cold_start_requests_and_ranks_with_the_srm_before_a_list(ttt):
    session = DeviceSession(make_runner(ttt), NeverPolicy(), history=[3, 7])
    shown = session.recommend(k=10)
    with torch.no_grad():
        direct = ttt.score_all(torch.tensor([[3, 7]]))[0, 1:].numpy()  # items 1..NUM_ITEMS
    direct[[2, 6]] = -np.inf  # the history is never shown
    assert shown.tolist() == (np.argsort(-direct, kind="stable")[:10] + 1).tolist()
    assert session.needs_refresh()  # no list: ask whatever the policy says
    cloud = Cloud()
    assert session.serve_step(cloud).shown.size == 10
    assert session.stats.requests == 1 and not session.needs_refresh()


@pytest.mark.parametrize("runner", ["ttt", "sasrec"])
def test_a_device_that_never_reaches_the_cloud_keeps_recommending(runner, request):
    cloud = Cloud()
    cloud.failure = "raise"
    model = request.getfixturevalue(runner)
    session = DeviceSession(make_runner(model), PeriodicPolicy(1), history=[5])
    for click in (9, 11, 13):
        shown = session.serve_step(cloud, k=5).shown
        assert len(shown) == 5 and not set(shown.tolist()) & set(session.history.tolist())
        session.observe(click)
    assert session.cached is None and session.stats.failures == session.stats.requests >= 1


@pytest.mark.parametrize("failure", ["raise", "none"])
def test_failed_requests_keep_the_cache_and_lose_no_click(ttt, failure):
    cloud = Cloud()
    config = SessionConfig(top_k=5, backoff_steps=1, max_backoff_steps=4)
    session = DeviceSession(make_runner(ttt), PeriodicPolicy(m=1), config=config, history=[40])
    session.request_fresh(cloud)
    initial = session.cached
    cloud.failure = failure
    clicks = [1, 2, 39, 3, 38, 4]
    for click in clicks:
        shown = session.serve_step(cloud).shown
        assert session.cached is initial  # still the first list
        assert len(shown) > 0 and not set(shown.tolist()) & set(session.history.tolist())
        session.observe(click)
    assert session.history.tolist() == [40, *clicks]
    assert session.stats.failures == session.stats.requests - 1 >= 2
    assert isinstance(session.last_error, FetchError)
    # the cloud comes back: the next request carries every click, the list is replaced
    cloud.failure = None
    for _ in range(5):  # at most max_backoff_steps of waiting
        if session.needs_refresh():
            assert session.request_fresh(cloud)
            break
        session.observe(5)
    assert session.cached is not initial and session.cached.fetched_at == session.step
    assert cloud.sent[-1][: len(clicks) + 1] == [40, *clicks]


def test_state_after_failures_equals_state_without_requests(ttt):
    """Clicks during an outage reach the SRM state exactly as they would otherwise."""
    clicks = [9, 14, 27, 3, 3, 18]
    cloud = Cloud()
    cloud.failure = "raise"
    failing = DeviceSession(make_runner(ttt), PeriodicPolicy(m=1), candidates=candidates([1, 2]))
    quiet = DeviceSession(make_runner(ttt), NeverPolicy(), candidates=candidates([1, 2]))
    for click in clicks:
        failing.serve_step(cloud)
        quiet.serve_step(cloud)
        failing.observe(click)
        quiet.observe(click)
    torch.testing.assert_close(failing.state[1], quiet.state[1])
    np.testing.assert_allclose(failing.srm_logits(), quiet.srm_logits())


def test_backoff_doubles_and_resets(ttt):
    cloud = Cloud()
    cloud.failure = "raise"
    config = SessionConfig(backoff_steps=1, max_backoff_steps=4)
    session = DeviceSession(make_runner(ttt), PeriodicPolicy(m=1), config=config)
    session.update_candidates(candidates([1, 2, 3]))
    attempts = []
    for step in range(16):
        if session.needs_refresh():
            attempts.append(step)
            session.request_fresh(cloud)
        session.observe(10 + step)
    # waits of 1, 2, 4, 4, ... steps after each failure (m = 1 wants a request every step)
    assert attempts == [1, 2, 4, 8, 12]
    cloud.failure = None
    assert session.request_fresh(cloud) and session.needs_refresh() is False  # fresh list, age 0
    session.observe(30)
    assert session.needs_refresh()  # back to asking every step


def test_unexpected_errors_propagate_and_still_keep_clicks(ttt):
    cloud = Cloud()
    session = DeviceSession(make_runner(ttt), NeverPolicy(), candidates=candidates([1, 2, 3]))
    session.observe(4)
    cloud.failure = "bug"
    with pytest.raises(KeyError):
        session.request_fresh(cloud)
    assert session.history.tolist() == [4] and session.cached is not None
    with pytest.raises(TypeError, match="CandidateList"):
        session.request_fresh(lambda history, exclude: [1, 2, 3])


def test_request_sends_the_last_l_clicks_and_periodic_stream(sasrec):
    cloud = Cloud()
    config = SessionConfig(request_history=3)
    session = DeviceSession(make_runner(sasrec), PeriodicPolicy(m=2), config=config)
    requested_at = []
    for step, click in enumerate([5, 6, 7, 8, 9, 10, 11]):
        before = session.stats.requests
        session.serve_step(cloud)
        if session.stats.requests > before:
            requested_at.append(step)
        session.observe(click)
    assert requested_at == [0, 2, 4, 6]  # the cold-start list, then every 2nd step
    assert cloud.sent == [[], [5, 6], [6, 7, 8], [8, 9, 10]]
    assert cloud.excluded == [[], [], [5], [5, 6, 7]]


def test_policy_is_asked_once_per_step_and_random_rate(ttt):
    cloud = Cloud()
    session = DeviceSession(
        make_runner(ttt), RandomPolicy(p=0.5, seed=0), candidates=candidates(range(1, 11))
    )
    for step in range(200):
        session.serve_step(cloud)
        session.observe(31 + step % 10)  # never a listed item: no list runs dry
    assert session.stats.failures == 0
    assert 70 < session.stats.requests < 130


def test_session_validation(ttt):
    session = DeviceSession(make_runner(ttt))
    with pytest.raises(ValueError, match=">= 1"):
        session.observe(0)
    with pytest.raises(ValueError, match="empty"):
        session.update_candidates(candidates([]))
    with pytest.raises(RuntimeError, match="no candidate list"):
        session.observation()
    with pytest.raises(ValueError, match="backoff"):
        SessionConfig(backoff_steps=4, max_backoff_steps=2)


def test_grpc_client_fetch_results_plug_in(ttt):
    client = pytest.importorskip("device.client")
    grpc = pytest.importorskip("grpc")
    session = DeviceSession(make_runner(ttt), NeverPolicy(), candidates=candidates([1, 2, 3]))
    initial = session.cached
    down = client.FetchResult(False, None, grpc.StatusCode.UNAVAILABLE, 3, 0.2, "no server")
    assert not session.request_fresh(lambda history, exclude: down)
    assert session.cached is initial and "no server" in str(session.last_error)
    assert session.last_fetch is down
    up = client.FetchResult(True, candidates([4, 5, 6]), grpc.StatusCode.OK, 1, 0.01)
    assert session.request_fresh(
        lambda history, exclude: up
    )  # an explicit request skips the back-off
    assert session.cached.items.tolist() == [4, 5, 6]


def test_step_outcome_says_what_the_step_did(ttt):
    cloud = Cloud()
    session = DeviceSession(make_runner(ttt), PeriodicPolicy(m=2), history=[3])
    first = session.serve_step(cloud)  # no list yet: always asks
    assert first.requested and first.succeeded and first.list_step == 0 and first.list_age == 0
    session.observe(7)
    second = session.serve_step(cloud)  # periodic(2): not this step
    assert not second.requested and not second.failed and second.list_age == 1
    session.observe(9)
    cloud.failure = "raise"
    third = session.serve_step(cloud)
    assert third.requested and third.failed and third.list_step == 0 and third.list_age == 2


def test_the_driver_runs_a_stream_and_a_dead_cloud_loses_nothing(ttt):
    """An unreachable server from the first step: the device shows its SRM ranking at every
    step, every click reaches the history and the state, and requests are recorded failed."""
    from device.driver import run_stream

    cloud = Cloud()
    cloud.failure = "raise"
    clicks = [9, 14, 27, 3, 18]
    shown_sizes = []
    session = DeviceSession(make_runner(ttt), PeriodicPolicy(m=1), history=[40])
    record = run_stream(
        session, cloud, clicks, k=5, after_step=lambda t, o: shown_sizes.append(o.shown.size)
    )
    assert shown_sizes == [5] * len(clicks) and session.history.tolist() == [40, *clicks]
    assert record.requested.any() and (record.failed == record.requested).all()
    assert (record.lists_used == 0).all() and record.ranks.shape == (5,)
    alive = DeviceSession(make_runner(ttt), PeriodicPolicy(m=1), history=[40])
    back = run_stream(alive, Cloud(), clicks, k=40)
    assert back.requested.all() and not back.failed.any()
    assert back.lists_used.tolist() == [0, 1, 2, 3, 4]
    # the fake cloud lists the 10 lowest unclicked items: 9 and 3 are in them, the rest not
    assert np.isfinite(back.ranks).tolist() == [True, False, False, True, False]


def test_a_request_sends_the_last_l_clicks_and_excludes_the_older_ones(sasrec):
    """The cloud reads the last L clicks; every older consumed item goes as the exclusion, so
    the fresh list holds only items the user has not consumed."""
    cloud = Cloud()
    session = DeviceSession(
        make_runner(sasrec), NeverPolicy(), config=SessionConfig(request_history=3)
    )
    for click in (1, 2, 3, 2, 4, 5, 6):
        session.observe(click)
    assert session.request_fresh(cloud)
    assert cloud.sent[-1] == [4, 5, 6]
    assert cloud.excluded[-1] == [1, 2, 3]  # distinct, none of the last three
    listed = set(session.cached.candidates.items.tolist())
    assert len(listed) == 10 and not listed & {1, 2, 3, 4, 5, 6}
