import numpy as np
import pytest

from shared.batching import NextItemBatcher, UserItemIndex, fixed_eval_negatives, pad_histories


def test_pad_histories_right_pads_and_keeps_newest():
    out = pad_histories([np.array([1, 2, 3, 4]), np.array([7])], max_len=3)
    assert out.tolist() == [[2, 3, 4], [7, 0, 0]]


def test_user_item_index_membership():
    index = UserItemIndex([np.array([1, 5]), np.array([2])], num_items=5)
    got = index.contains(np.array([0, 1]), np.array([[1, 2], [2, 5]]))
    assert got.tolist() == [[True, False], [True, False]]


def test_batcher_negatives_are_never_the_users_items():
    rng = np.random.default_rng(0)
    seqs = [rng.choice(np.arange(1, 31), size=20, replace=False) for _ in range(8)]
    batcher = NextItemBatcher(seqs, num_items=30, max_len=5, num_negatives=4, batch_size=16, seed=1)
    seen_examples = 0
    for batch in batcher:
        assert batch.items.shape[1] == 5 and (batch.labels[:, 0] == 1).all()
        assert (batch.labels[:, 1:] == 0).all()
        for user, hist, row in zip(batch.users, batch.history, batch.items):
            seq = seqs[user].tolist()
            assert row[0] in seq and set(hist[hist > 0].tolist()) <= set(seq)
            assert seq[seq.index(row[0]) - int((hist > 0).sum()) : seq.index(row[0])] == [
                int(h) for h in hist[hist > 0]
            ], "the history is the clicks just before the positive"
            assert not set(row[1:].tolist()) & set(seq)
        seen_examples += len(batch.items)
    assert seen_examples == 8 * 19


def test_fixed_eval_negatives_are_seeded_distinct_and_exclude_user_items():
    seqs = [np.array([1, 2, 3]), np.array([4, 5])]
    a = fixed_eval_negatives(seqs, num_items=150, count=99, seed=7)
    b = fixed_eval_negatives(seqs, num_items=150, count=99, seed=7)
    np.testing.assert_array_equal(a, b)
    for row, seq in zip(a, seqs):
        assert len(set(row.tolist())) == 99 and not set(row.tolist()) & set(seq.tolist())
    with pytest.raises(ValueError, match="only"):
        fixed_eval_negatives(seqs, num_items=50, count=99)


def test_prefix_cap_limits_examples_per_user_and_varies_by_epoch():
    seqs = [np.arange(1, 41), np.arange(41, 46)]
    batcher = NextItemBatcher(
        seqs, num_items=50, max_len=5, batch_size=100, seed=0, prefixes_per_user=3
    )
    epochs = []
    for _ in range(2):
        batch = next(iter(batcher))
        assert sorted(np.bincount(batch.users).tolist()) == [3, 3]
        epochs.append(sorted(batch.items[:, 0].tolist()))
    assert epochs[0] != epochs[1]
    assert len(batcher) == 1
