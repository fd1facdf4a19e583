"""Collaborative SRM training (LSC4Rec's steps 3 and 4), without importing the cloud model.

Step 3, cooperative training: the frozen LLM proposes a candidate list for training
histories; the SRM is trained with pointwise BCE over `[target] + candidates`, padded to 100
items (with random negatives when `fill_random` is on), so the LLM's candidates act as hard
negatives and the SRM learns to rank *inside* the LLM's candidate distribution.

Step 4, adaptive re-training: a short fine-tune on each user's newest training interactions
with the plain 1:4 objective.

The LLM enters only as a function `histories -> list[CandidateList]`, so this module (part of
the device package) never imports transformers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seqrec.training import train_srm
from shared.batching import (
    NextItemBatcher,
    TrainBatch,
    UserItemIndex,
    pad_histories,
    sample_negatives,
)
from shared.cache import digest, load_npz, save_npz, sequences_digest
from shared.candidates import CandidateList
from shared.progress import progress_bar

GenerateFn = Callable[[list[np.ndarray]], list[CandidateList]]


@dataclass(frozen=True)
class CandidateExamples:
    """LLM candidate lists for chosen (user, target position) pairs of the training data.

    Attributes:
        users: `[E]` user index of each example.
        positions: `[E]` index of the target inside the user's training sequence.
        candidates: `[E, N]` the LLM's list for the history before the target (best first).
    """

    users: np.ndarray
    positions: np.ndarray
    candidates: np.ndarray


def choose_positions(
    sequences: Sequence[np.ndarray], per_user: int
) -> tuple[np.ndarray, np.ndarray]:
    """The newest `per_user` target positions of each training sequence (position >= 1)."""
    users, positions = [], []
    for user, seq in enumerate(sequences):
        for pos in range(max(1, len(seq) - per_user), len(seq)):
            users.append(user)
            positions.append(pos)
    return np.asarray(users, dtype=np.int64), np.asarray(positions, dtype=np.int64)


def build_candidate_examples(
    generate: GenerateFn,
    sequences: Sequence[np.ndarray],
    per_user: int = 5,
    batch_size: int = 64,
    progress: bool = True,
) -> CandidateExamples:
    """Ask the LLM for a list before each of the newest `per_user` clicks of every user."""

    users, positions = choose_positions(sequences, per_user)
    lists: list[np.ndarray] = []
    bar = progress_bar(total=len(users), desc="LLM candidates", enabled=progress, leave=False)
    for start in range(0, len(users), batch_size):
        rows = range(start, min(start + batch_size, len(users)))
        histories = [sequences[users[r]][: positions[r]] for r in rows]
        lists += [c.items for c in generate(histories)]
        bar.update(len(rows))
    bar.close()
    width = max(len(x) for x in lists) if lists else 0
    candidates = np.zeros((len(lists), width), dtype=np.int64)
    for row, items in enumerate(lists):
        candidates[row, : len(items)] = items
    return CandidateExamples(users, positions, candidates)


def cache_key(
    model_version: str, sequences: Sequence[np.ndarray], per_user: int, n: int
) -> dict[str, Any]:
    """What one (generator, training data, settings) combination's lists depend on."""
    return {
        "kind": "collab",
        "generator": model_version,
        "sequences": sequences_digest(sequences),
        "per_user": per_user,
        "n": n,
    }


def cached_candidate_examples(
    generate: GenerateFn,
    model_version: str,
    sequences: Sequence[np.ndarray],
    cache_dir: Path,
    per_user: int = 5,
    n: int = 50,
    progress: bool = True,
) -> CandidateExamples:
    """`build_candidate_examples`, stored under `cache_dir` (`shared.cache`) and reused when
    the key matches."""
    key = cache_key(model_version, sequences, per_user, n)
    path = Path(cache_dir) / f"collab-{digest(key)}.npz"
    cached = load_npz(path, key)
    if cached is not None:
        return CandidateExamples(cached["users"], cached["positions"], cached["candidates"])
    examples = build_candidate_examples(generate, sequences, per_user, progress=progress)
    arrays = {"users": examples.users, "positions": examples.positions}
    save_npz(path, key, {**arrays, "candidates": examples.candidates})
    return examples


class CandidateBatcher:
    """Batches of `[target] + LLM candidates (+ random negatives)`, padded to `list_size`.

    Candidates equal to the target or inside the history are dropped (the target is labelled
    1, everything else 0); with `fill_random`, the remaining slots take uniform negatives that
    are not the user's items, else they stay padding (id 0, ignored by the loss).
    """

    def __init__(
        self,
        sequences: Sequence[np.ndarray],
        examples: CandidateExamples,
        num_items: int,
        max_len: int = 50,
        list_size: int = 100,
        fill_random: bool = True,
        batch_size: int = 128,
        seed: int = 0,
        hard_negatives: int | None = None,
    ) -> None:
        if list_size < 2:
            raise ValueError(f"list_size must be >= 2, got {list_size}")
        if hard_negatives is not None and hard_negatives < 0:
            raise ValueError(f"hard_negatives must be >= 0, got {hard_negatives}")
        self.sequences = [np.asarray(s, dtype=np.int64) for s in sequences]
        self.examples, self.num_items, self.max_len = examples, num_items, max_len
        self.list_size, self.fill_random, self.batch_size = list_size, fill_random, batch_size
        limit = list_size - 1 if hard_negatives is None else min(hard_negatives, list_size - 1)
        self.hard_negatives = limit
        self.known = UserItemIndex(self.sequences, num_items)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return -(-len(self.examples.users) // self.batch_size)

    def __iter__(self) -> Iterator[TrainBatch]:
        order = self.rng.permutation(len(self.examples.users))
        for start in range(0, len(order), self.batch_size):
            yield self._make_batch(order[start : start + self.batch_size])

    def _make_batch(self, rows: np.ndarray) -> TrainBatch:
        users, positions = self.examples.users[rows], self.examples.positions[rows]
        histories = [
            self.sequences[u][max(0, p - self.max_len) : p] for u, p in zip(users, positions)
        ]
        items = np.zeros((len(rows), self.list_size), dtype=np.int64)
        for out_row, (row, user, pos) in enumerate(zip(rows, users, positions)):
            items[out_row] = self._item_row(self.examples.candidates[row], user, pos)
        if self.fill_random:
            empty = items == 0
            if empty.any():
                fill = sample_negatives(self.rng, users, self.list_size, self.num_items, self.known)
                items[empty] = fill[empty]
        labels = np.zeros(items.shape, dtype=np.float32)
        labels[:, 0] = 1.0
        return TrainBatch(pad_histories(histories, self.max_len), items, labels, users)

    def _item_row(self, candidates: np.ndarray, user: int, pos: int) -> np.ndarray:
        seq = self.sequences[user]
        target = seq[pos]
        # Never a negative the user clicks (before or after): those are not "wrong" answers.
        seen = set(seq.tolist()) | {0}
        hard = [int(c) for c in candidates if int(c) not in seen][: self.hard_negatives]
        row = np.zeros(self.list_size, dtype=np.int64)
        row[0] = target
        row[1 : 1 + len(hard)] = hard
        return row


@dataclass
class CollaborativeConfig:
    per_user: int = 5  # LLM lists per user, before each of the newest training clicks
    list_size: int = 100  # [target] + candidates padded to this length (LSC4Rec: 100)
    fill_random: bool = True  # fill the padding with random negatives (else leave it ignored)
    epochs: int = 5  # cooperative-training epochs (step 3)
    adaptive_epochs: int = 1  # adaptive re-training epochs on the newest clicks (step 4; 0 = off)
    adaptive_newest: int = 3  # newest training clicks per user used by step 4
    adaptive_lr: float = 3e-4  # a smaller step than training's, so step 4 adapts, not restarts
    hard_negatives: int | None = None  # LLM candidates per example (None = all that fit)
    lr: float | None = None  # learning rate of step 3 (None = the training config's)

    def __post_init__(self) -> None:
        if self.per_user < 1:
            raise ValueError(f"per_user must be >= 1, got {self.per_user}")
        if self.hard_negatives is not None and self.hard_negatives < 0:
            raise ValueError(f"hard_negatives must be >= 0, got {self.hard_negatives}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.list_size < 2:
            raise ValueError(f"list_size must be >= 2, got {self.list_size}")
        if self.epochs < 0 or self.adaptive_epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs} and {self.adaptive_epochs}")
        if self.adaptive_newest < 1:
            raise ValueError(f"adaptive_newest must be >= 1, got {self.adaptive_newest}")


def train_collaborative(
    model,
    sequences,
    valid,
    examples: CandidateExamples,
    train_config,
    config: CollaborativeConfig,
    on_epoch=None,
) -> dict:
    """Steps 3 and 4 on an SRM trained alone (step 2); returns each stage's training result.

    Both stages keep their best epoch by the validation metric inside the LLM's lists
    (`valid` must carry them: `ValidationSet.with_lists`).
    """
    import dataclasses

    results = {}
    if config.epochs:
        batcher = CandidateBatcher(
            sequences,
            examples,
            model.config.num_items,
            max_len=train_config.max_len,
            list_size=config.list_size,
            fill_random=config.fill_random,
            seed=train_config.seed,
            hard_negatives=config.hard_negatives,
        )
        # One example per LLM list, BCE against its hard negatives (per-prefix batches).
        stage = dataclasses.replace(
            train_config,
            epochs=config.epochs,
            lr=train_config.lr if config.lr is None else config.lr,
            select_protocol="list",
            level="prefix",
            loss="bce",
        )
        results["collaborative"] = train_srm(model, sequences, valid, stage, on_epoch, batcher)
    if config.adaptive_epochs:
        batcher = NextItemBatcher(
            sequences,
            model.config.num_items,
            max_len=train_config.max_len,
            num_negatives=train_config.num_negatives,
            batch_size=train_config.batch_size,
            seed=train_config.seed + 1,
            newest=config.adaptive_newest,
        )
        stage = dataclasses.replace(
            train_config,
            epochs=config.adaptive_epochs,
            lr=config.adaptive_lr,
            select_protocol="list",
            level="prefix",
            loss="bce",
        )
        results["adaptive"] = train_srm(model, sequences, valid, stage, on_epoch, batcher)
    return results
