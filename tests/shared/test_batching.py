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


# Independent references: pairs rebuilt from the raw sequences (target = seq[pos + 1]), not from
# the batchers' own outputs.


def raw_pairs(sequences, max_len):
    """Every (history of at most max_len clicks -> next click) of the raw sequences."""
    return sorted(
        (u, tuple(seq[max(0, pos + 1 - max_len) : pos + 1]), int(seq[pos + 1]))
        for u, seq in enumerate(sequences)
        for pos in range(len(seq) - 1)
    )


def test_prefix_batches_are_the_raw_history_next_click_pairs():
    sequences = [np.array([5, 9, 2, 7]), np.array([3, 8]), np.array([4]), np.array([1, 6, 2])]
    batcher = NextItemBatcher(sequences, num_items=10, max_len=2, num_negatives=1, batch_size=3)
    found = []
    for batch in batcher:
        for row, user in enumerate(batch.users):
            history = batch.history[row][batch.history[row] != 0]
            found.append((int(user), tuple(int(i) for i in history), int(batch.items[row, 0])))
    assert sorted(found) == raw_pairs(sequences, max_len=2)
    assert len(found) == 3 + 1 + 0 + 2


@pytest.mark.parametrize("stride", [1, 3, 5])
def test_window_batches_train_the_raw_history_next_click_pairs(stride):
    from shared.batching import WindowBatcher

    rng = np.random.default_rng(4)
    sequences = [rng.permutation(np.arange(1, 40))[: rng.integers(2, 16)] for _ in range(6)]
    max_len = 5
    batcher = WindowBatcher(sequences, num_items=40, max_len=max_len, stride=stride,
                            num_negatives=2, batch_size=4)  # fmt: skip
    found = []
    for batch in batcher:
        for row, user in enumerate(batch.users):
            for t in np.flatnonzero(batch.targets[row]):
                history = tuple(int(i) for i in batch.inputs[row, : t + 1])  # what position t reads
                found.append((int(user), history, int(batch.targets[row, t])))
    # each target's history is the window's clicks up to it: all of the newest max_len clicks
    # when stride is 1, a tail of them otherwise
    expected = {(u, h[-1], target) for u, h, target in raw_pairs(sequences, max_len)}
    assert sorted((u, h[-1], target) for u, h, target in found) == sorted(expected)
    full = dict(((u, h[-1], t), h) for u, h, t in raw_pairs(sequences, max_len))
    for user, history, target in found:
        assert full[(user, history[-1], target)][-len(history) :] == history
        if stride == 1:
            assert full[(user, history[-1], target)] == history
