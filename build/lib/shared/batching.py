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


def draw_items(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    num_items: int,
    probabilities: np.ndarray | None = None,
) -> np.ndarray:
    """Item ids in 1..num_items: uniform, or by `probabilities` (`[num_items]`, summing to 1)."""
    if probabilities is None:
        return rng.integers(1, num_items + 1, size=shape)
    cumulative = np.cumsum(probabilities)
    draws = np.searchsorted(cumulative, rng.random(shape) * cumulative[-1], side="right")
    return np.minimum(draws, num_items - 1) + 1


def sample_negatives(
    rng: np.random.Generator,
    users: np.ndarray,
    count: int,
    num_items: int,
    known: UserItemIndex,
    max_rounds: int = 100,
    probabilities: np.ndarray | None = None,
) -> np.ndarray:
    """`[len(users), count]` items from 1..num_items, none of them the user's.

    Drawn uniformly, or by `probabilities` (`[num_items]`); rejected draws are redrawn; a
    user who has every item raises ValueError.
    """
    out = draw_items(rng, (len(users), count), num_items, probabilities)
    for _ in range(max_rounds):
        bad = known.contains(users, out)
        if not bad.any():
            return out
        out[bad] = draw_items(rng, (int(bad.sum()),), num_items, probabilities)
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


def window_starts(length: int, max_len: int, stride: int) -> np.ndarray:
    """Input windows over a sequence of `length` clicks, as sorted start positions.

    Inputs are clicks `0..length-2` (each predicts the next one). The last window ends at the
    newest input; earlier ones start `stride` clicks before the next, the first at 0, so with
    `stride <= max_len` every input position lies in some window.
    """
    width = min(max_len, length - 1)
    starts = list(range(length - 1 - width, 0, -stride)) + [0]
    return np.unique(np.asarray(starts, dtype=np.int64))


def assigned_starts(starts: np.ndarray, length: int, max_len: int) -> np.ndarray:
    """`[length - 1]`: for each input position, the start of the window that trains it.

    A position lies in several windows when they overlap; it is trained once, in the window
    where it has the most history before it (the earliest start that still covers it).
    """
    width = min(max_len, length - 1)
    positions = np.arange(length - 1)
    return starts[np.searchsorted(starts, positions - width + 1, side="left")]


@dataclass(frozen=True)
class WindowBatch:
    """Sequence-level training: every position of a window predicts the click after it."""

    inputs: np.ndarray  # [B, W] right-padded clicks of each window
    targets: np.ndarray  # [B, W] the click after each input position; 0 = no loss there
    negatives: np.ndarray  # [B, W, K] sampled negatives per position; 0 = none (masked)
    users: np.ndarray  # [B] index of the user each window comes from
    log_q: np.ndarray | None = None  # [B, W, K] log sampling probability of each negative

    @property
    def num_targets(self) -> int:
        return int((self.targets != 0).sum())


class WindowBatcher:
    """Windows of `max_len` clicks of every training sequence, shuffled, with fresh negatives.

    Every (history → next click) pair of a sequence is trained exactly once per epoch, in one
    window (`assigned_starts`). With `stride = max_len` the windows do not overlap and the
    first targets of a window see only the clicks since its start (as few as one); a smaller
    stride overlaps the windows so that every target keeps at least `max_len − stride` clicks
    of history (all of it near the sequence's start), at `max_len / stride` times the compute.
    `stride = 1` gives each target its full `max_len` history, as one example per prefix does.

    Args:
        sequences: per-user training sequences.
        num_items: catalogue size.
        max_len: window length `W` (the model's history length).
        stride: clicks between window starts (0 = `max_len // 2`).
        num_negatives: negatives per position (`K`); 0 for the full-softmax loss.
        batch_size: windows per batch.
        seed: fixes the order and the negatives of every epoch.
        shared_negatives: one set of `K` negatives for the whole batch (the same for every
            position; entries that are one of the row's user's items are masked with 0),
            instead of `K` per position.
        sampler: "uniform" over the catalogue, or "popularity" (proportional to the number of
            training clicks); `log_q` carries the sampling log-probability for the log-Q
            correction of the sampled softmax.
    """

    def __init__(
        self,
        sequences: Sequence[np.ndarray],
        num_items: int,
        max_len: int = 50,
        stride: int = 0,
        num_negatives: int = 4,
        batch_size: int = 128,
        seed: int = 0,
        shared_negatives: bool = False,
        sampler: str = "uniform",
    ) -> None:
        stride = stride or max(1, max_len // 2)
        if not 1 <= stride <= max_len or num_negatives < 0 or batch_size < 1:
            raise ValueError(
                f"need 1 <= stride <= max_len, num_negatives >= 0, batch_size >= 1; got "
                f"stride {stride}, max_len {max_len}, {num_negatives}, {batch_size}"
            )
        if sampler not in ("uniform", "popularity"):
            raise ValueError(f"sampler must be uniform or popularity, got {sampler!r}")
        self.sequences = [np.asarray(s, dtype=np.int64) for s in sequences]
        self.num_items, self.max_len, self.stride = num_items, max_len, stride
        self.num_negatives, self.batch_size = num_negatives, batch_size
        self.shared_negatives = shared_negatives
        self.known = UserItemIndex(self.sequences, num_items)
        self.rng = np.random.default_rng(seed)
        self.probabilities = self._sampling_probabilities(sampler)
        self.windows = self._index_windows()  # [Wn, 2] (user, start)

    def _sampling_probabilities(self, sampler: str) -> np.ndarray | None:
        if sampler == "uniform":
            return None
        counts = np.bincount(np.concatenate(self.sequences), minlength=self.num_items + 1)
        counts = counts[1:].astype(np.float64) + 1.0  # every item can be drawn
        return counts / counts.sum()

    def _index_windows(self) -> np.ndarray:
        """`[Wn, 2]` (user, start) of every window; fills `self.assigned` on the way."""
        pairs, self.assigned = [], []
        for user, seq in enumerate(self.sequences):
            starts = window_starts(len(seq), self.max_len, self.stride) if len(seq) >= 2 else []
            pairs += [(user, start) for start in starts]
            self.assigned.append(
                assigned_starts(starts, len(seq), self.max_len) if len(seq) >= 2 else None
            )
        return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return -(-len(self.windows) // self.batch_size)

    def __iter__(self) -> Iterator[WindowBatch]:
        order = self.rng.permutation(len(self.windows))
        for begin in range(0, len(order), self.batch_size):
            chunk = self.windows[order[begin : begin + self.batch_size]]
            yield self.make_batch(chunk[:, 0], chunk[:, 1])

    def make_batch(self, users: np.ndarray, starts: np.ndarray) -> WindowBatch:
        """The windows of `users` starting at `starts`, with this call's negatives."""
        inputs = np.zeros((len(users), self.max_len), dtype=np.int64)
        targets = np.zeros_like(inputs)
        for row, (user, start) in enumerate(zip(users, starts)):
            seq = self.sequences[user]
            width = min(self.max_len, len(seq) - 1)
            trained = self.assigned[user][start : start + width] == start
            inputs[row, :width] = seq[start : start + width]
            targets[row, :width] = np.where(trained, seq[start + 1 : start + 1 + width], 0)
        width = int((inputs != 0).sum(1).max()) if len(inputs) else 1
        inputs, targets = inputs[:, :width], targets[:, :width]  # no all-pad columns
        negatives, log_q = self._negatives(users, targets)
        return WindowBatch(inputs, targets, negatives, users, log_q)

    def _negatives(self, users: np.ndarray, targets: np.ndarray):
        b, w, k = *targets.shape, self.num_negatives
        if k == 0:
            return np.zeros((b, w, 0), dtype=np.int64), None
        if self.shared_negatives:
            shared = self._draw((k,))  # [K]
            own = self.known.contains(users, np.broadcast_to(shared, (b, k)))  # [B, K]
            per_row = np.where(own, 0, shared)  # [B, K]
            negatives = np.broadcast_to(per_row[:, None, :], (b, w, k)).copy()
        else:
            rows = np.repeat(users, w)  # [B*W]
            negatives = sample_negatives(
                self.rng, rows, k, self.num_items, self.known, probabilities=self.probabilities
            ).reshape(b, w, k)
        negatives[targets == 0] = 0  # no negatives where there is no loss
        return negatives, self._log_q(negatives)

    def _draw(self, shape: tuple[int, ...]) -> np.ndarray:
        return draw_items(self.rng, shape, self.num_items, self.probabilities)

    def _log_q(self, negatives: np.ndarray) -> np.ndarray:
        if self.probabilities is None:
            q = np.full(negatives.shape, 1.0 / self.num_items)
        else:
            q = self.probabilities[np.maximum(negatives, 1) - 1]
        return np.log(q).astype(np.float32)

    def own_item_mask(self, users: np.ndarray) -> np.ndarray:
        """`[B, num_items + 1]` True at each row's user's items (and at the padding column 0)."""
        mask = np.zeros((len(users), self.num_items + 1), dtype=bool)
        for row, user in enumerate(users):
            mask[row, self.sequences[user]] = True
        mask[:, 0] = True
        return mask


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
