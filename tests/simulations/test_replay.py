"""Replay engine: the list and SRM caches, fast replay vs DeviceSession, always / never."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import pytest
import torch

from device.fusion import (
    AgeAlphaFusion,
    LearnedFusion,
    LLMOnlyFusion,
    RankSigmoidFusion,
    rerank,
)
from device.policies import (
    AlwaysPolicy,
    ConsistencyPolicy,
    LearnedPolicy,
    NeverPolicy,
    PeriodicPolicy,
    RandomPolicy,
)
from seqrec.models.ttt4rec import TTT4Rec
from seqrec.runners import make_runner
from shared.datasets.synthetic import make_synthetic
from shared.splits import split_stream
from simulations.replay import (
    CachedFetch,
    ReplayConfig,
    ReplayStream,
    compute_srm_tables,
    load_or_compute_srm_tables,
    load_or_generate_lists,
    prepare_replay,
    replay,
    replay_sessions,
    stream_from_split,
    target_positions,
)

WINDOW = 5  # test window T: short streams keep the tests fast
N = 20  # candidates per list (the tiny catalogue has 120 items)
CONFIG = ReplayConfig(n=N, request_history=12)  # L < history length, so truncation is tested


class CountingGenerator:
    """Wraps a generator and counts the histories it was asked for."""

    def __init__(self, generator, version: str | None = None) -> None:
        self.generator = generator
        self.model_version = version or generator.model_version
        self.config = generator.config
        self.calls = 0
        self.requests = 0

    def generate(self, histories, n=50, batch_size=32, exclude=None):
        self.calls += 1
        self.requests += len(histories)
        return self.generator.generate(histories, n=n, batch_size=batch_size, exclude=exclude)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def split():
    dataset = make_synthetic(num_users=24, num_items=120, min_length=22, max_length=36, seed=5)
    return split_stream(dataset, test_window=WINDOW)


@pytest.fixture(scope="module")
def generator(split, tiny_generator):
    return tiny_generator(split, N)


@pytest.fixture(scope="module")
def srm(split, tiny_ttt4rec):
    return tiny_ttt4rec(split.num_items)


@pytest.fixture(scope="module")
def data(split, generator, srm, tmp_path_factory):
    cache = tmp_path_factory.mktemp("replay_cache")
    return prepare_replay(stream_from_split(split), generator, srm, CONFIG, cache, "tiny")


def test_streams_follow_the_protocol(split):
    test, valid = stream_from_split(split, "test"), stream_from_split(split, "valid")
    row = 3
    user = int(test.users[row])
    np.testing.assert_array_equal(test.history(row, 0), split.history_at_stream_start(user))
    np.testing.assert_array_equal(test.targets[row], split.stream[user])
    # the validation stream ends with the validation target and never reaches the test stream
    vrow = int(np.flatnonzero(valid.users == user)[0])
    assert valid.targets[vrow, -1] == split.valid_target[user]
    assert len(valid.sequences[vrow]) == len(split.history_at_stream_start(user))
    np.testing.assert_array_equal(valid.history(vrow, WINDOW), test.history(row, 0))
    with pytest.raises(ValueError, match="role"):
        stream_from_split(split, "train")
    with pytest.raises(ValueError, match="needs >= 1 click"):
        ReplayStream("test", np.array([0]), (np.array([1, 2]),), np.array([1]), 3)


def test_fresh_lists_hold_no_item_clicked_before_they_were_made(split, generator):
    """The replay sends the last L clicks and excludes the older ones, as a device does: a
    list made at step t holds none of the user's clicks before t, even beyond the last L."""
    stream = stream_from_split(split)
    config = dataclasses.replace(CONFIG, request_history=4)  # most histories are longer
    lists = load_or_generate_lists(generator, stream, config)
    leaked = 0
    for row in range(stream.num_users):
        for t in range(stream.window):
            history = stream.history(row, t)
            assert len(history) > 4
            leaked += np.isin(lists.items[row, t], history).sum()
    assert leaked == 0
    assert (lists.items > 0).all()  # still N items each


def test_list_cache_is_reused_and_invalidated(split, generator, tmp_path):
    stream = stream_from_split(split)
    counting = CountingGenerator(generator)
    first = load_or_generate_lists(counting, stream, CONFIG, tmp_path, "tiny")
    assert counting.requests == stream.num_users * WINDOW and not first.from_cache
    second = load_or_generate_lists(counting, stream, CONFIG, tmp_path, "tiny")
    assert second.from_cache and counting.requests == stream.num_users * WINDOW  # no new call
    np.testing.assert_array_equal(first.items, second.items)
    np.testing.assert_array_equal(first.scores, second.scores)
    calls = counting.calls
    changes = [
        (counting, stream, dataclasses.replace(CONFIG, n=N - 5), "tiny"),  # n
        (counting, stream, dataclasses.replace(CONFIG, request_history=8), "tiny"),  # L
        (counting, stream, CONFIG, "other-data"),  # data set
        (counting, stream_from_split(split, "test", window=WINDOW - 1), CONFIG, "tiny"),  # T
        (CountingGenerator(generator, "t5-atomic-retrained"), stream, CONFIG, "tiny"),  # model
    ]
    for gen, changed_stream, config, label in changes:
        before = gen.calls
        lists = load_or_generate_lists(gen, changed_stream, config, tmp_path, label)
        assert not lists.from_cache and gen.calls > before
    assert counting.calls > calls


def test_lists_are_the_generator_lists_for_the_sent_history(split, generator, data):
    row, step = 2, 3
    history = data.stream.history(row, step)
    sent = history[-CONFIG.request_history :]
    older = history[: -CONFIG.request_history]
    fresh = generator.generate([sent], n=N, exclude=[older])[0]
    np.testing.assert_array_equal(data.lists.items[row, step], fresh.items)
    assert not np.isin(fresh.items, history).any()


def test_srm_cache_is_reused_and_follows_the_weights(split, srm, data, tmp_path):
    stream, lists = data.stream, data.lists
    first = load_or_compute_srm_tables(srm, stream, lists, 0, tmp_path)
    second = load_or_compute_srm_tables(srm, stream, lists, 0, tmp_path)
    assert second.from_cache and not first.from_cache
    np.testing.assert_array_equal(first.logits, second.logits)
    changed = TTT4Rec(srm.config).eval()
    changed.load_state_dict(srm.state_dict())
    with torch.no_grad():
        changed.item_embedding.weight[1] += 0.5
    assert not load_or_compute_srm_tables(changed, stream, lists, 0, tmp_path).from_cache


def test_resumed_states_give_the_same_tables(split, srm, data):
    valid = stream_from_split(split, "valid")
    runner = make_runner(srm)
    resume: dict = {}
    # any lists of the right shape will do: only the states the validation pass leaves matter
    valid_rows = [int(np.flatnonzero(data.stream.users == u)[0]) for u in valid.users]
    valid_lists = dataclasses.replace(
        data.lists, items=data.lists.items[valid_rows], scores=data.lists.scores[valid_rows]
    )
    compute_srm_tables(runner, valid, valid_lists, resume=resume)
    assert set(resume) == set(valid.users.tolist())
    resumed = compute_srm_tables(runner, data.stream, data.lists, resume=resume)
    np.testing.assert_array_equal(resumed.logits, data.srm.logits)


class OneByOne:
    """A stateful runner the tables cannot batch: the user-by-user path, as a device steps."""

    def __init__(self, runner) -> None:
        self.runner, self.num_items = runner, runner.num_items

    def __getattr__(self, name):
        return getattr(self.runner, name)


@pytest.mark.parametrize("name", ["ttt4rec", "gru4rec", "sasrec", "din"])
def test_batched_tables_equal_stepping_each_user_alone(name, split, srm, data):
    from seqrec.models import build_model

    if name != "ttt4rec":  # stepping (gru4rec) or re-reading the last 8 clicks
        torch.manual_seed(0)
        model = build_model(name, num_items=split.num_items, hidden_size=16, max_len=8)
        with torch.no_grad():
            model.item_embedding.weight.normal_(0.0, 0.5)
        model = model.eval()
    else:
        model = srm
    valid = stream_from_split(split, "valid")
    valid_rows = [int(np.flatnonzero(data.stream.users == u)[0]) for u in valid.users]
    valid_lists = dataclasses.replace(
        data.lists, items=data.lists.items[valid_rows], scores=data.lists.scores[valid_rows]
    )
    tables = {}
    for how, runner, chunk in (("batched", make_runner(model), 5), ("alone", None, 0)):
        runner = runner or OneByOne(make_runner(model))
        resume: dict = {}
        compute_srm_tables(runner, valid, valid_lists, resume=resume, chunk_users=chunk or 1)
        tables[how] = compute_srm_tables(
            runner, data.stream, data.lists, split.num_items, resume=resume, chunk_users=chunk or 1
        )
    batched, alone = tables["batched"], tables["alone"]
    # float32 sums in another order: equal to a few units in the last place of the largest
    scale = np.abs(alone.logits).max()
    np.testing.assert_allclose(batched.logits, alone.logits, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(batched.surprise, alone.surprise, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(batched.full_ranks, alone.full_ranks)
    assert np.abs(batched.logits).max() > 1e-3  # the logits are not all ~0


def test_tables_from_worker_processes_equal_one_process(split, srm, data):
    from simulations.replay.tables import compute_srm_tables_parallel

    valid = stream_from_split(split, "valid")
    valid_rows = [int(np.flatnonzero(data.stream.users == u)[0]) for u in valid.users]
    valid_lists = dataclasses.replace(
        data.lists, items=data.lists.items[valid_rows], scores=data.lists.scores[valid_rows]
    )
    one, spread = {}, {}
    compute_srm_tables(make_runner(srm), valid, valid_lists, resume=one, chunk_users=5)
    want = compute_srm_tables(
        make_runner(srm), data.stream, data.lists, split.num_items, one, chunk_users=5
    )  # the same chunks: the same float sums, so the same bits
    compute_srm_tables_parallel(srm, valid, valid_lists, resume=spread, workers=2, chunk_users=5)
    got = compute_srm_tables_parallel(
        srm, data.stream, data.lists, split.num_items, spread, workers=2, chunk_users=5
    )  # five chunks over two processes, the validation states carried over
    np.testing.assert_array_equal(got.logits, want.logits)
    np.testing.assert_array_equal(got.full_ranks, want.full_ranks)
    np.testing.assert_array_equal(got.surprise, want.surprise)
    assert set(spread) == set(one)
    with pytest.raises(ValueError, match="table_backend"):
        ReplayConfig(table_backend="spark")


def test_lists_from_worker_processes_equal_one_process(generator, data):
    """The fresh lists made by two spawned workers, several tasks each, equal one process's."""
    from simulations.replay.lists import load_or_generate_lists

    config = dataclasses.replace(CONFIG, chunk_size=2)  # 32 requests a task
    want = load_or_generate_lists(generator, data.stream, config)
    got = load_or_generate_lists(
        generator, data.stream, dataclasses.replace(config, table_workers=2)
    )
    assert data.num_users * WINDOW > 3 * 32  # more tasks than workers
    np.testing.assert_array_equal(got.items, want.items)
    np.testing.assert_array_equal(got.scores, want.scores)  # the same batches: the same bits


def test_tables_from_ray_tasks_equal_one_process(split, srm, data):
    pytest.importorskip("ray")  # an optional extra: pip install ray
    from simulations.replay.tables import compute_srm_tables_parallel

    want = compute_srm_tables(
        make_runner(srm), data.stream, data.lists, split.num_items, chunk_users=5
    )
    got = compute_srm_tables_parallel(
        srm, data.stream, data.lists, split.num_items, workers=2, backend="ray", chunk_users=5
    )
    np.testing.assert_array_equal(got.logits, want.logits)
    np.testing.assert_array_equal(got.full_ranks, want.full_ranks)


def test_always_shows_the_fresh_list_of_every_step(srm, data):
    result = replay(data, AlwaysPolicy())
    assert result.request_rate == 1.0
    np.testing.assert_array_equal(
        result.lists_used, np.tile(np.arange(WINDOW), (data.num_users, 1))
    )
    runner = make_runner(srm)
    for row in range(data.num_users):
        state = runner.init_state()
        for item in data.stream.history(row, 0):
            state = runner.step(state, int(item))
        for t, target in enumerate(data.stream.targets[row]):
            fresh = data.lists.candidates(row, t)
            history = data.stream.history(row, t)
            logits = runner.score_items(state, history, fresh.items)
            shown = rerank(fresh, logits, history, RankSigmoidFusion()).tolist()
            expected = shown.index(target) if target in shown else np.inf
            assert result.ranks[row, t] == expected
            state = runner.step(state, int(target))


def test_never_requests_nothing_and_keeps_the_initial_list(data):
    result = replay(data, NeverPolicy())
    assert result.request_rate == 0.0 and not result.requested.any()
    assert (result.lists_used == 0).all()
    np.testing.assert_array_equal(result.ranks, data.fused_ranks(RankSigmoidFusion())[:, :, 0])
    fresh = replay(data, AlwaysPolicy())
    assert not np.array_equal(result.ranks, fresh.ranks)  # the lists do go stale


POLICIES = [
    RandomPolicy(p=0.4, seed=7),
    PeriodicPolicy(m=2),
    ConsistencyPolicy(measure="kendall", threshold=0.5, tie_prob=0.5, seed=3),
    ConsistencyPolicy(measure="topk", threshold=0.6, tie_prob=0.3, seed=1),
]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.label)
def test_device_sessions_give_the_fast_replay_records(srm, data, policy):
    fast = replay(data, policy)
    via_table = replay_sessions(data, policy)
    via_model = replay_sessions(data, policy, runner_factory=lambda row: make_runner(srm))
    for other in (via_table, via_model):
        np.testing.assert_array_equal(other.requested, fast.requested)
        np.testing.assert_array_equal(other.lists_used, fast.lists_used)
        np.testing.assert_array_equal(other.ranks, fast.ranks)
    assert 0.0 < fast.request_rate < 1.0


AGE_AWARE = [
    AgeAlphaFusion(alphas=(0.9, 0.6, 0.3, 0.1, 0.0)),
    LearnedFusion(weights=(2.0, 1.0, 0.5, 0.2, -2.0, -1.0, 3.0, 1.0)),
]


@pytest.mark.parametrize("fusion", AGE_AWARE, ids=lambda f: f.name)
def test_device_sessions_give_the_fast_replay_records_with_an_age_aware_fusion(srm, data, fusion):
    """The session's list age (clicks since the list was made) is the replay's t − j."""
    policy = RandomPolicy(p=0.3, seed=4)
    fast = replay(data, policy, fusion)
    via_model = replay_sessions(data, policy, fusion, runner_factory=lambda row: make_runner(srm))
    np.testing.assert_array_equal(via_model.requested, fast.requested)
    np.testing.assert_array_equal(via_model.ranks, fast.ranks)
    assert not np.array_equal(fast.ranks, replay(data, policy, RankSigmoidFusion(0.9)).ranks)


def test_fusion_changes_the_ranks_but_not_the_requests(data):
    policy = RandomPolicy(p=0.5, seed=2)
    fused, llm = replay(data, policy), replay(data, policy, LLMOnlyFusion())
    np.testing.assert_array_equal(fused.requested, llm.requested)
    assert not np.array_equal(fused.ranks, llm.ranks)
    assert llm.label.endswith("|llm_only")


def test_records_and_rates(data):
    result = replay(data, PeriodicPolicy(m=2))
    records = result.records()
    assert len(records) == data.num_users * WINDOW
    assert result.request_rate == sum(r["requested"] for r in records) / len(records)
    assert result.request_rate == pytest.approx(((WINDOW - 1) // 2) / WINDOW)
    first = records[0]
    assert {"user", "step", "requested", "list_age", "rank", "NDCG@10", "HR@20"} <= set(first)
    summary = result.summary()
    assert summary["HR@5"] <= summary["HR@10"] <= summary["HR@20"]
    assert summary["NDCG@10"] == pytest.approx(np.mean([r["NDCG@10"] for r in records]))


def test_cached_fetch_knows_only_the_stream_histories(data):
    fetch = CachedFetch(data, 0)
    history = data.stream.history(0, 2)[-CONFIG.request_history :]
    np.testing.assert_array_equal(fetch(history).items, data.lists.items[0, 2])
    with pytest.raises(KeyError, match="no cached list"):
        fetch(history[1:])
    assert fetch.calls == 2


def test_target_positions():
    ranked = np.array([[4, 2, 9], [1, 0, 0]])
    assert target_positions(ranked, np.array([9, 3])).tolist() == [2.0, np.inf]
    assert target_positions(np.zeros((1, 0), dtype=np.int64), np.array([5])).tolist() == [np.inf]


def test_config_validation():
    with pytest.raises(ValueError, match="n must be"):
        ReplayConfig(n=0)
    with pytest.raises(ValueError, match="request_history"):
        ReplayConfig(request_history=0)


SURPRISE_POLICIES = [
    ConsistencyPolicy(measure="last_click_position", threshold=0.99, seed=2),
    ConsistencyPolicy(measure="drift_mean", threshold=0.3, seed=4),
    ConsistencyPolicy(measure="surprisal", threshold=4.6, seed=5),
    ConsistencyPolicy(measure="list_rank_mean", threshold=0.3, seed=6),
]


@pytest.mark.parametrize("policy", SURPRISE_POLICIES, ids=lambda p: p.label)
def test_surprise_policies_replay_as_devices_run_them(srm, data, policy):
    fast = replay(data, policy)
    via_model = replay_sessions(data, policy, runner_factory=lambda row: make_runner(srm))
    np.testing.assert_array_equal(via_model.requested, fast.requested)
    np.testing.assert_array_equal(via_model.ranks, fast.ranks)
    assert 0.0 < fast.request_rate < 1.0


@dataclasses.dataclass(eq=False)
class _Recorder(RandomPolicy):
    """Random requests that remember every observation (class-level, shared by spawns)."""

    seen: ClassVar[list] = []

    def decide(self, obs):
        type(self).seen.append(obs)
        return super().decide(obs)


def test_devices_see_the_surprise_rows_the_replay_gives(srm, data):
    _Recorder.seen = []
    policy = _Recorder(p=0.4, seed=9)
    result = replay_sessions(data, policy, runner_factory=lambda row: make_runner(srm))
    observations = iter(_Recorder.seen)
    for row in range(data.num_users):
        held = 0
        for t in range(data.window):
            obs = next(observations)
            expected = data.surprise_rows(row, t, held)
            np.testing.assert_allclose(obs.surprise, expected, rtol=1e-5, atol=1e-5)
            assert len(expected) == max(t - held, 1)
            held = t if result.requested[row, t] else held


def test_learned_policy_with_surprise_features_replays_as_devices_run_it(srm, data):
    from simulations.request_rate.calibration import fit_learned

    model, _, _ = fit_learned(data, RankSigmoidFusion())
    policy = LearnedPolicy(model=model, threshold=0.3, seed=1)
    fast = replay(data, policy)
    via_model = replay_sessions(data, policy, runner_factory=lambda row: make_runner(srm))
    np.testing.assert_array_equal(via_model.requested, fast.requested)
    assert 0.0 < fast.request_rate < 1.0


def test_state_tables_give_the_rows_each_device_state_sees(data):
    from simulations.request_rate.states import state_index, surprise_state_rows

    rows, steps, held = state_index(data)
    last, mean = surprise_state_rows(data, rows, steps, held)
    for i in range(0, len(rows), 7):
        seen = data.surprise_rows(rows[i], steps[i], held[i])
        np.testing.assert_allclose(last[i], seen[-1])
        np.testing.assert_allclose(mean[i], seen.mean(axis=0))
