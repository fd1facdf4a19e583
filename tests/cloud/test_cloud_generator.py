"""The generator's contract: valid, distinct, unseen, ranked candidates; clear errors; round trips."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.generator import CandidateGenerator
from shared.candidates import CandidateList


def _histories(split, count=6):
    return [split.train[u] for u in range(count)]


def test_every_candidate_is_valid_distinct_and_unseen(trained, tiny_data):
    _, split = tiny_data
    histories = _histories(split) + [np.array([5]), np.arange(1, 41)]  # short and long histories
    lists = trained.generate(histories, n=30, batch_size=4)
    assert len(lists) == len(histories)
    for history, cands in zip(histories, lists):
        assert isinstance(cands, CandidateList)
        items = cands.items
        assert items.dtype == np.int64 and cands.scores.dtype == np.float32
        assert len(items) == 30
        assert items.min() >= 1 and items.max() <= trained.num_items
        assert len(np.unique(items)) == 30
        assert not set(items.tolist()) & set(np.asarray(history).tolist())
        assert np.all(np.diff(cands.scores) <= 0), "scores must be ranked, best first"
        assert np.all(cands.scores <= 0), "scores are log-probabilities"
        assert cands.model_version == trained.model_version


def test_can_return_every_item_outside_the_history(trained):
    history = np.arange(1, 111)  # 110 of 120 items seen: exactly 10 remain
    (cands,) = trained.generate([history], n=10)
    assert sorted(cands.items.tolist()) == list(range(111, 121))


def test_scores_are_sequence_log_probs_and_beam_search_is_exact_when_wide(trained, tiny_data):
    _, split = tiny_data
    history = split.train[1]
    trained.config.num_beams = trained.num_items  # wide enough to be exhaustive
    try:
        (cands,) = trained.generate([history], n=15)
    finally:
        trained.config.num_beams = 50
    allowed = np.setdiff1d(np.arange(1, trained.num_items + 1), history)
    exact = trained.log_probs(history, allowed)
    best = allowed[np.argsort(-exact, kind="stable")[:15]]
    np.testing.assert_allclose(cands.scores, np.sort(exact)[::-1][:15], rtol=1e-4, atol=1e-4)
    assert set(cands.items.tolist()) == set(best.tolist())


def test_batched_equals_one_at_a_time(trained, tiny_data):
    _, split = tiny_data
    histories = _histories(split, 5)
    batched = trained.generate(histories, n=20, batch_size=5)
    for history, cands in zip(histories, batched):
        (alone,) = trained.generate([history], n=20)
        np.testing.assert_array_equal(alone.items, cands.items)
        np.testing.assert_allclose(alone.scores, cands.scores, atol=1e-5)


def test_save_and_load_give_identical_candidates(trained, tiny_data, tmp_path):
    _, split = tiny_data
    histories = _histories(split)
    before = trained.generate(histories, n=25)
    trained.save_pretrained(tmp_path / "gen")
    assert not list((tmp_path / "gen").rglob("*.bin")), "weights must be safetensors"
    assert list((tmp_path / "gen").rglob("*.safetensors"))
    loaded = CandidateGenerator.from_pretrained(tmp_path / "gen")
    after = loaded.generate(histories, n=25)
    assert loaded.model_version == trained.model_version
    assert loaded.config == trained.config
    assert loaded.item_titles == trained.item_titles
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a.items, b.items)
        np.testing.assert_array_equal(a.scores, b.scores)


@pytest.mark.parametrize(
    ("histories", "n", "match"),
    [
        ([[]], 5, "history 0 is empty"),
        ([[1, 2], []], 5, "history 1 is empty"),
        ([], 5, "no histories"),
        ([[1, 999]], 5, "unknown item id 999"),
        ([[0, 3]], 5, "unknown item id 0"),
        ([[-4]], 5, "unknown item id -4"),
        ([[1.5, 2.0]], 5, "integer item ids"),
        ([[1, 2]], 0, "n must be an integer >= 1"),
        ([[1, 2]], -3, "n must be an integer >= 1"),
        ([[1, 2]], 2.5, "n must be an integer >= 1"),
        ([[1, 2]], 119, "larger than the 118 items outside history 0"),
        ([list(range(1, 121))], 1, "larger than the 0 items"),
    ],
)
def test_bad_requests_raise_value_error(create_generator, histories, n, match):
    generator = create_generator()
    with pytest.raises(ValueError, match=match):
        generator.generate(histories, n=n)


def test_repeated_history_items_count_once(create_generator):
    generator = create_generator()
    (cands,) = generator.generate([[3, 3, 3, 4]], n=118)  # 120 items, 2 distinct seen
    assert sorted(cands.items.tolist()) == [i for i in range(1, 121) if i not in (3, 4)]


def test_from_pretrained_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        CandidateGenerator.from_pretrained(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a generator folder"):
        CandidateGenerator.from_pretrained(tmp_path / "empty")
