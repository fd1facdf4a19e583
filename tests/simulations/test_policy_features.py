"""The learned policy's features as a device computes them, one observation at a time, equal
the replay's vectorised feature table at every reachable state, surprise rows included.

The two paths share `request_features` but not how the surprise rows are summarised: the
device reads its own rows since the fetch (`observation_rows`), the replay takes cumulative
sums over its `[U, T, T, S]` click table (`surprise_state_rows`).
"""

from __future__ import annotations

import numpy as np
import pytest

from device.policies import FeatureConfig
from device.policies.learned import observation_features
from device.policies.surprise import SURPRISE_MEASURES
from shared.device_format import SURPRISE_COLUMNS
from simulations.replay import FreshLists, ReplayData, ReplayStream, SRMTables
from simulations.replay.tables import pair_count
from simulations.request_rate import feature_rows, state_index

USERS, T, N, ITEMS = 5, 6, 8, 40


def random_data(seed: int = 0) -> ReplayData:
    """Random clicks, lists, SRM logits and surprise columns: every state has its own values."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(2, 6, size=USERS)
    sequences = tuple(rng.permutation(np.arange(1, ITEMS + 1))[: s + T] for s in starts)
    stream = ReplayStream("test", np.arange(USERS), sequences, starts, T)
    items = np.stack([[rng.choice(np.arange(1, ITEMS + 1), N, replace=False) for _ in range(T)]
                      for _ in range(USERS)])  # fmt: skip
    scores = -np.sort(rng.random((USERS, T, N)), axis=-1).astype(np.float32)
    logits = rng.normal(size=(USERS, pair_count(T), N)).astype(np.float32)  # held pairs
    surprise = rng.normal(size=(USERS, T, len(SURPRISE_COLUMNS)))
    lists = FreshLists(items, scores, model_version="random", request_history=50)
    return ReplayData(stream, lists, SRMTables(logits, np.full((USERS, T), np.nan), surprise))


@pytest.mark.parametrize(
    "surprise",
    [
        FeatureConfig().surprise,
        tuple(SURPRISE_MEASURES),  # every column, last click and mean since the fetch
    ],
    ids=["default", "every-surprise-measure"],
)
def test_device_features_equal_the_replay_table_at_every_state(surprise):
    data = random_data()
    config = FeatureConfig(recent_k=3, top_k=4, surprise=surprise)
    table = feature_rows(data, config)
    rows, steps, held = state_index(data)
    several = 0
    for i, (row, step, list_step) in enumerate(zip(rows, steps, held)):
        obs = data.observation(row, step, list_step)
        several += len(obs.surprise) > 1
        np.testing.assert_allclose(observation_features(obs, config), table[i], rtol=1e-9,
                                   atol=1e-12, err_msg=f"state {(row, step, list_step)}")  # fmt: skip
    assert several > len(rows) // 3  # many states average several clicks' rows


def test_whole_stream_tables_in_small_chunks_equal_one_chunk(monkeypatch):
    """Valid masks, click rows, features, measure tables, fused ranks and the learned fusion's
    examples made a few users at a time are the one-chunk arrays, bit for bit."""
    from device.fusion import RankSigmoidFusion
    from simulations.replay import engine
    from simulations.request_rate import fusion_fit, measure_table

    config = FeatureConfig(recent_k=3, top_k=4, surprise=tuple(SURPRISE_MEASURES))

    def tables() -> list[np.ndarray]:
        data = random_data(seed=2)
        return [
            data.valid,
            data.click_rows,
            feature_rows(data, config),
            measure_table(data, "kendall"),
            measure_table(data, "drift_mean"),
            data.fused_ranks(RankSigmoidFusion(alpha=0.3)),
            *fusion_fit.fusion_examples(data),
        ]

    whole = tables()
    monkeypatch.setattr(engine, "ROW_CHUNK", 2 * T * T)  # two users a chunk
    monkeypatch.setattr(fusion_fit, "ROW_CHUNK", 7)
    for one, chunked in zip(whole, tables()):
        np.testing.assert_array_equal(chunked, one)
