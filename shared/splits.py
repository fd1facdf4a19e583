"""The split roles of the evaluation protocol (docs/design.md §3).

For a user with chronological items `s_1 … s_n` and test window `T`:

    training part      s_1 … s_{n−T−1}     (trains the cloud LLM and the device SRM)
    validation target  s_{n−T}             (model selection, policy calibration)
    online stream      s_{n−T+1} … s_n     (the device–cloud experiment)

Users with fewer than `T + min_extra` interactions stay out of the stream; all their
interactions then belong to the training part.

Cold items (`cold_share > 0`, the cold-item protocol of the candidate table): a seeded share
of the catalogue loses every interaction from the training parts, so no model trains on them;
validation targets and streams keep them, as a new item in a real catalogue is clicked
before any model has seen it. The leave-one-out view of the training part
(for the offline model tables) holds out its last two items as validation and test targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shared.datasets.base import SequenceDataset


@dataclass(frozen=True)
class StreamSplit:
    """Per-user training parts, validation targets and online streams (see module docstring).

    Attributes:
        test_window: `T`, the number of online steps per stream user.
        num_items: catalogue size.
        train: per user, the training part (all of it for users outside the stream).
        valid_target: `[U]` the validation target `s_{n−T}`, 0 for users outside the stream.
        stream: per user, the `T` online-stream items (empty for users outside the stream).
        stream_users: indices of the users that have a stream, ascending.
        cold_items: the items removed from every training part (empty without cold items).
    """

    test_window: int
    num_items: int
    train: list[np.ndarray]
    valid_target: np.ndarray
    stream: list[np.ndarray]
    stream_users: np.ndarray
    cold_items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def history_at_stream_start(self, user: int) -> np.ndarray:
        """`s_1 … s_{n−T}`: what the device knows when the stream starts."""
        return np.append(self.train[user], self.valid_target[user])


def choose_cold_items(num_items: int, share: float, seed: int = 0) -> np.ndarray:
    """`round(share · num_items)` item ids drawn without replacement by `seed`, ascending."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"the cold-item share must be in [0, 1), got {share}")
    count = int(round(share * num_items))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(np.arange(1, num_items + 1), size=count, replace=False))


def split_stream(
    dataset: SequenceDataset,
    test_window: int = 10,
    min_extra: int = 5,
    cold_share: float = 0.0,
    cold_seed: int = 0,
) -> StreamSplit:
    """Split every user's sequence into training part, validation target and online stream.

    Args:
        cold_share: share of the catalogue whose interactions leave the training parts.
        cold_seed: the seed that draws them.
    Raises:
        ValueError: `test_window` < 1, `min_extra` < 1 or `cold_share` outside [0, 1).
    """
    cold = choose_cold_items(dataset.num_items, cold_share, cold_seed)
    if test_window < 1:
        raise ValueError(f"test_window must be >= 1, got {test_window}")
    if min_extra < 1:
        raise ValueError(f"min_extra must be >= 1, got {min_extra}")
    train, stream, valid, users = [], [], [], []
    empty = np.zeros(0, dtype=np.int64)
    for user, seq in enumerate(dataset.sequences):
        n = len(seq)
        if n < test_window + min_extra:
            train.append(seq.copy())
            stream.append(empty)
            valid.append(0)
            continue
        train.append(seq[: n - test_window - 1].copy())
        valid.append(int(seq[n - test_window - 1]))
        stream.append(seq[n - test_window :].copy())
        users.append(user)
    if len(cold):
        train = [part[~np.isin(part, cold)] for part in train]
    return StreamSplit(
        test_window=test_window,
        num_items=dataset.num_items,
        train=train,
        valid_target=np.asarray(valid, dtype=np.int64),
        stream=stream,
        stream_users=np.asarray(users, dtype=np.int64),
        cold_items=cold,
    )


@dataclass(frozen=True)
class LeaveOneOutSplit:
    """Leave-one-out on a set of sequences (the offline model-table protocol).

    Attributes:
        train: per user, the sequence without its last two items (trains the model).
        users: indices of the users that have validation and test targets.
        valid_history / valid_target: `train[u]` → its next item `s_{m−1}`, for `users`.
        test_history / test_target: `s_1 … s_{m−1}` → `s_m`, for `users`.
    """

    train: list[np.ndarray]
    users: np.ndarray
    valid_history: list[np.ndarray]
    valid_target: np.ndarray
    test_history: list[np.ndarray]
    test_target: np.ndarray


def leave_one_out(sequences: list[np.ndarray], min_train: int = 1) -> LeaveOneOutSplit:
    """Hold out each sequence's last item (test) and the one before it (validation).

    Sequences shorter than `min_train + 2` keep all their items for training.
    """
    train, users, v_hist, v_tgt, t_hist, t_tgt = [], [], [], [], [], []
    for user, seq in enumerate(sequences):
        if len(seq) < min_train + 2:
            train.append(seq.copy())
            continue
        train.append(seq[:-2].copy())
        users.append(user)
        v_hist.append(seq[:-2].copy())
        v_tgt.append(int(seq[-2]))
        t_hist.append(seq[:-1].copy())
        t_tgt.append(int(seq[-1]))
    return LeaveOneOutSplit(
        train=train,
        users=np.asarray(users, dtype=np.int64),
        valid_history=v_hist,
        valid_target=np.asarray(v_tgt, dtype=np.int64),
        test_history=t_hist,
        test_target=np.asarray(t_tgt, dtype=np.int64),
    )
