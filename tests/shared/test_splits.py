import numpy as np
import pytest

from shared.datasets.synthetic import make_synthetic
from shared.splits import leave_one_out, split_stream


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic(
        num_users=60, num_items=200, num_topics=5, min_length=8, max_length=40, seed=3
    )


def test_split_roles_partition_each_sequence(dataset):
    split = split_stream(dataset, test_window=10)
    for user, seq in enumerate(dataset.sequences):
        if user in set(split.stream_users.tolist()):
            joined = np.concatenate(
                [split.train[user], [split.valid_target[user]], split.stream[user]]
            )
            np.testing.assert_array_equal(joined, seq)
            assert len(split.stream[user]) == 10
        else:
            assert len(seq) < 15
            np.testing.assert_array_equal(split.train[user], seq)
            assert split.valid_target[user] == 0 and len(split.stream[user]) == 0


def test_stream_items_never_leak_into_training(dataset):
    split = split_stream(dataset, test_window=10)
    for user in split.stream_users:
        # positions: training indices all come before the stream indices of the same user
        seq = dataset.sequences[user]
        n_train = len(split.train[user])
        assert n_train == len(seq) - 11
        assert not set(split.stream[user].tolist()) & set(split.train[user].tolist())
        assert split.valid_target[user] not in set(split.train[user].tolist())
    loo = leave_one_out(split.train)
    for row, user in enumerate(loo.users):
        assert loo.test_target[row] not in set(loo.train[user].tolist())
        stream = set(split.stream[user].tolist())
        assert not stream & set(loo.train[user].tolist())
        assert loo.test_target[row] not in stream


def test_leave_one_out_holds_out_last_two():
    seqs = [np.array([1, 2, 3, 4, 5]), np.array([6, 7])]
    loo = leave_one_out(seqs)
    assert loo.users.tolist() == [0]
    assert loo.train[0].tolist() == [1, 2, 3] and loo.train[1].tolist() == [6, 7]
    assert loo.valid_history[0].tolist() == [1, 2, 3] and loo.valid_target.tolist() == [4]
    assert loo.test_history[0].tolist() == [1, 2, 3, 4] and loo.test_target.tolist() == [5]


def test_split_rejects_bad_window(dataset):
    with pytest.raises(ValueError, match="test_window"):
        split_stream(dataset, test_window=0)


def test_cold_items_leave_every_training_part_and_stay_as_targets(dataset):
    plain = split_stream(dataset, test_window=5)
    cold = split_stream(dataset, test_window=5, cold_share=0.1, cold_seed=4)
    assert len(cold.cold_items) == round(0.1 * dataset.num_items)
    assert np.array_equal(cold.cold_items, np.unique(cold.cold_items))
    assert not np.isin(np.concatenate(cold.train), cold.cold_items).any()
    for before, after in zip(plain.train, cold.train):  # only the cold items left, order kept
        assert np.array_equal(before[~np.isin(before, cold.cold_items)], after)
    np.testing.assert_array_equal(cold.valid_target, plain.valid_target)
    assert all(np.array_equal(a, b) for a, b in zip(cold.stream, plain.stream))
    assert np.isin(cold.valid_target, cold.cold_items).any()  # cold targets exist
    again = split_stream(dataset, test_window=5, cold_share=0.1, cold_seed=4)
    np.testing.assert_array_equal(again.cold_items, cold.cold_items)
    other = split_stream(dataset, test_window=5, cold_share=0.1, cold_seed=5)
    assert not np.array_equal(other.cold_items, cold.cold_items)
    assert len(plain.cold_items) == 0


@pytest.mark.parametrize("share", [-0.1, 1.0])
def test_a_cold_share_outside_0_1_is_refused(dataset, share):
    with pytest.raises(ValueError, match=r"cold-item share must be in \[0, 1\)"):
        split_stream(dataset, cold_share=share)
