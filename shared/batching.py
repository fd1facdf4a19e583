"""Batches for SRM training and fixed negatives for evaluation.

Histories are right-padded `[B, L]` int64 arrays (`[i_1, …, i_n, 0, …, 0]`), keeping the last
`L` clicks. Training examples are every (prefix → next item) of each training sequence, with
sampled negatives that are never one of the user's own items.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


def pad_histories(histories: Sequence[np.ndarray], max_len: int) -> np.ndarray:
    """Right-pad (and left-truncate) histories to `[B, max_len]`, keeping the newest clicks."""
    out = np.zeros((len(histories), max_len), dtype=np.int64)
    for row, hist in enumerate(histories):
        tail = np.asarray(hist, dtype=np.int64)[-max_len:]
        out[row, : len(tail)] = tail
    return out


class UserItemIndex:
    """Membership test "is item i one of user u's items?" for many (u, i) pairs at once.

    Kept as one sorted array of `u * (num_items + 1) + i` keys, so it scales to catalogues
    where a dense users × items matrix would not fit.
    """

    def __init__(self, sequences: Sequence[np.ndarray], num_items: int) -> None:
        self.stride = num_items + 1
        keys = [u * self.stride + np.asarray(s, dtype=np.int64) for u, s in enumerate(sequences)]
        self.keys = np.unique(np.concatenate(keys)) if keys else np.zeros(0, dtype=np.int64)

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Boolean array shaped like `items`: `users` is `[B]`, `items` is `[B]` or `[B, K]`."""
        users = np.asarray(users, dtype=np.int64)
        users = users.reshape(users.shape + (1,) * (items.ndim - users.ndim))
        query = users * self.stride + items
        if len(self.keys) == 0:
            return np.zeros(query.shape, dtype=bool)
        pos = np.minimum(np.searchsorted(self.keys, query), len(self.keys) - 1)
        return self.keys[pos] == query


def sample_negatives(
    rng: np.random.Generator,
    users: np.ndarray,
    count: int,
    num_items: int,
    known: UserItemIndex,
    max_rounds: int = 100,
) -> np.ndarray:
    """`[len(users), count]` items drawn uniformly from 1..num_items, none of them the user's.

    Rejected draws are redrawn; a user who has every item raises ValueError.
    """
    out = rng.integers(1, num_items + 1, size=(len(users), count))
    for _ in range(max_rounds):
        bad = known.contains(users, out)
        if not bad.any():
            return out
        out[bad] = rng.integers(1, num_items + 1, size=int(bad.sum()))
    raise ValueError("could not sample negatives: some user has (almost) every item")


@dataclass(frozen=True)
class TrainBatch:
    """One batch of pointwise BCE training: column 0 of `items` is the positive."""

    history: np.ndarray  # [B, L] right-padded item ids
    items: np.ndarray  # [B, 1 + K] positive then K negatives (0 = padding)
    labels: np.ndarray  # [B, 1 + K] float32, 1.0 for the positive
    users: np.ndarray  # [B] index of the user each row comes from

    def to_torch(self):
        import torch

        return (
            torch.from_numpy(self.history),
            torch.from_numpy(self.items),
            torch.from_numpy(self.labels),
        )


class NextItemBatcher:
    """Every (prefix → next item) of the training sequences, shuffled, with fresh negatives.

    Args:
        sequences: per-user training sequences.
        num_items: catalogue size.
        max_len: history length `L` fed to the model.
        num_negatives: negatives per positive (1:4 by default, as both papers train).
        batch_size: examples per batch.
        seed: fixes the order and the negatives of every epoch.
        newest: if > 0, use only each sequence's newest `newest` targets (adaptive fine-tuning).
        prefixes_per_user: if set, each epoch uses at most this many target positions per
            user, drawn afresh every epoch (bounds an epoch's cost on long histories).
    """

    def __init__(
        self,
        sequences: Sequence[np.ndarray],
        num_items: int,
        max_len: int = 50,
        num_negatives: int = 4,
        batch_size: int = 256,
        seed: int = 0,
        newest: int = 0,
        prefixes_per_user: int | None = None,
    ) -> None:
        if num_negatives < 0 or batch_size < 1 or max_len < 1:
            raise ValueError(
                f"need num_negatives >= 0, batch_size >= 1, max_len >= 1; got "
                f"{num_negatives}, {batch_size}, {max_len}"
            )
        self.sequences = [np.asarray(s, dtype=np.int64) for s in sequences]
        self.num_items, self.max_len = num_items, max_len
        self.num_negatives, self.batch_size = num_negatives, batch_size
        self.known = UserItemIndex(self.sequences, num_items)
        self.rng = np.random.default_rng(seed)
        self.examples = self._index_examples(newest)  # [E, 2] (user, target position)
        self.prefixes_per_user = prefixes_per_user

    def _index_examples(self, newest: int) -> np.ndarray:
        pairs = []
        for user, seq in enumerate(self.sequences):
            if len(seq) < 2:
                continue
            first = max(1, len(seq) - newest) if newest > 0 else 1
            positions = range(first, len(seq))
            pairs += [(user, p) for p in positions]
        return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return -(-len(self._epoch_examples(dry_run=True)) // self.batch_size)

    def __iter__(self) -> Iterator[TrainBatch]:
        examples = self._epoch_examples()
        order = self.rng.permutation(len(examples))
        for start in range(0, len(order), self.batch_size):
            chunk = examples[order[start : start + self.batch_size]]
            yield self._make_batch(chunk[:, 0], chunk[:, 1])

    def _epoch_examples(self, dry_run: bool = False) -> np.ndarray:
        """All examples, or at most `prefixes_per_user` random ones per user for this epoch."""
        cap = self.prefixes_per_user
        if not cap:
            return self.examples
        users = self.examples[:, 0]
        # A random key per example; keep the `cap` smallest keys of each user.
        keys = np.zeros(len(users)) if dry_run else self.rng.random(len(users))
        order = np.lexsort((keys, users))
        first = np.searchsorted(users[order], users[order], side="left")
        keep = order[np.arange(len(order)) - first < cap]
        return self.examples[np.sort(keep)]

    def _make_batch(self, users: np.ndarray, positions: np.ndarray) -> TrainBatch:
        histories = [
            self.sequences[u][max(0, p - self.max_len) : p] for u, p in zip(users, positions)
        ]
        targets = np.array([self.sequences[u][p] for u, p in zip(users, positions)], dtype=np.int64)
        negatives = sample_negatives(
            self.rng, users, self.num_negatives, self.num_items, self.known
        )
        items = np.concatenate([targets[:, None], negatives], axis=1)
        labels = np.zeros(items.shape, dtype=np.float32)
        labels[:, 0] = 1.0
        return TrainBatch(pad_histories(histories, self.max_len), items, labels, users)


def fixed_eval_negatives(
    sequences: Sequence[np.ndarray], num_items: int, count: int = 99, seed: int = 0
) -> np.ndarray:
    """`[U, count]` negatives per user for the sampled protocol, fixed by `seed`.

    Never an item of the user's whole sequence (so never the target), distinct within a row.
    """
    rng = np.random.default_rng(seed)
    out = np.zeros((len(sequences), count), dtype=np.int64)
    for user, seq in enumerate(sequences):
        allowed = np.setdiff1d(np.arange(1, num_items + 1), seq)
        if len(allowed) < count:
            raise ValueError(
                f"user {user} leaves only {len(allowed)} items to sample {count} negatives"
            )
        out[user] = rng.choice(allowed, size=count, replace=False)
    return out
