"""The in-memory form of every data set: per-user chronological item sequences.

Loaders turn raw files into an `InteractionLog` (raw ids, one row per interaction, file
order kept); `build_sequence_dataset` re-indexes items from 1 (0 is padding), optionally
applies k-core filtering, and sorts each user's interactions by time with stable ties.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class DatasetError(ValueError):
    """A data file that cannot be read; the message names the file and the problem."""


@dataclass(frozen=True)
class InteractionLog:
    """Raw interactions in file order (implicit feedback: every row counts)."""

    users: np.ndarray  # [R] raw user ids (str or int)
    items: np.ndarray  # [R] raw item ids (str or int)
    timestamps: np.ndarray  # [R] int64 seconds
    item_titles: dict = field(default_factory=dict)  # raw item id -> title, when known
    item_attributes: dict = field(default_factory=dict)  # raw item id -> attribute tokens
    latent: np.ndarray | None = None  # [R] a generator's hidden state per row (synthetic topics)

    def __post_init__(self) -> None:
        n = len(self.users)
        if len(self.items) != n or len(self.timestamps) != n:
            raise ValueError("users, items and timestamps must have the same length")
        if self.latent is not None and len(self.latent) != n:
            raise ValueError("latent must have one entry per interaction")


@dataclass(frozen=True)
class SequenceDataset:
    """Per-user chronological sequences of re-indexed items.

    Attributes:
        name: data set name, e.g. "ml-100k".
        sequences: per user, `[n_u]` int64 item ids in 1..num_items, oldest first.
        timestamps: per user, `[n_u]` int64 seconds, aligned with `sequences`.
        num_items: catalogue size (item ids run 1..num_items; 0 is padding).
        user_ids: raw user id of each user, in the order of `sequences`.
        item_ids: raw id of each item; index 0 is "" (padding), index i is item i.
        item_titles: title of each item (index i = item i, index 0 = ""), or None.
        item_attributes: attribute tokens of each item (index i = item i, index 0 = ()), e.g.
            ("genre=Drama", "year=1995", "decade=1990s", "word=babe"), or None.
        latent_topics: per user, `[n_u]` the interest the generator drew each click from,
            aligned with `sequences` (synthetic data only; None for real data).
    """

    name: str
    sequences: list[np.ndarray]
    timestamps: list[np.ndarray]
    num_items: int
    user_ids: list[str]
    item_ids: list[str]
    item_titles: list[str] | None = None
    item_attributes: list[tuple[str, ...]] | None = None
    latent_topics: list[np.ndarray] | None = None

    @property
    def num_users(self) -> int:
        return len(self.sequences)

    @property
    def num_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    def title(self, item: int) -> str:
        """Title of `item`, or its raw id when the data set has no titles."""
        if self.item_titles is not None and self.item_titles[item]:
            return self.item_titles[item]
        return str(self.item_ids[item])


def k_core_filter(log: InteractionLog, k: int) -> InteractionLog:
    """Keep only interactions whose user and item each have at least `k` of them (iterated)."""
    if k <= 1:
        return log
    keep = np.ones(len(log.users), dtype=bool)
    while True:
        _, user_inv, user_counts = np.unique(
            log.users[keep], return_inverse=True, return_counts=True
        )
        _, item_inv, item_counts = np.unique(
            log.items[keep], return_inverse=True, return_counts=True
        )
        ok = (user_counts[user_inv] >= k) & (item_counts[item_inv] >= k)
        if ok.all():
            break
        idx = np.flatnonzero(keep)
        keep[idx[~ok]] = False
    latent = None if log.latent is None else log.latent[keep]
    return InteractionLog(
        log.users[keep],
        log.items[keep],
        log.timestamps[keep],
        log.item_titles,
        log.item_attributes,
        latent,
    )


def _first_appearance_index(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes 0..n-1 in order of first appearance, and the unique values in that order."""
    uniques, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # unique position -> rank of first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[inverse], uniques[order]


def build_sequence_dataset(
    log: InteractionLog, name: str, k_core: int = 0, source: str = "<memory>"
) -> SequenceDataset:
    """Re-index a raw log into per-user chronological sequences.

    Items are numbered from 1 in order of first appearance in the time-sorted log, users in
    order of first appearance in the file. Ties in time keep file order (stable sort).

    Raises:
        DatasetError: when no interaction is left (empty file or too strict a k-core).
    """
    log = k_core_filter(log, k_core)
    if len(log.users) == 0:
        raise DatasetError(
            f"{source}: no interactions left to read (empty file or k-core {k_core})"
        )
    by_time = np.argsort(log.timestamps, kind="stable")
    item_codes, item_uniques = _first_appearance_index(log.items[by_time])
    item_of_row = np.empty(len(by_time), dtype=np.int64)
    item_of_row[by_time] = item_codes + 1  # 0 is padding
    user_codes, user_uniques = _first_appearance_index(log.users)
    # Group rows by user, keeping time order and, within a time, file order.
    order = np.lexsort((np.arange(len(user_codes)), log.timestamps, user_codes))
    bounds = np.flatnonzero(np.diff(user_codes[order])) + 1
    groups = np.split(order, bounds)
    titles = None
    if log.item_titles:
        titles = [""] + [str(log.item_titles.get(raw, "")) for raw in item_uniques.tolist()]
    attributes = None
    if log.item_attributes:
        raw_items = item_uniques.tolist()
        attributes = [()] + [tuple(log.item_attributes.get(raw, ())) for raw in raw_items]
    return SequenceDataset(
        name=name,
        sequences=[item_of_row[g] for g in groups],
        timestamps=[log.timestamps[g].astype(np.int64) for g in groups],
        num_items=len(item_uniques),
        user_ids=[str(u) for u in user_uniques.tolist()],
        item_ids=[""] + [str(i) for i in item_uniques.tolist()],
        item_titles=titles,
        item_attributes=attributes,
        latent_topics=None if log.latent is None else [log.latent[g] for g in groups],
    )


def item_texts(dataset: SequenceDataset) -> list[str] | None:
    """The text of each item (index i = item i, index 0 = ""), or None without titles.

    An item's text is what the data set knows of it: its title, then its release year and
    genres when it has them, e.g. "English Patient, The (1996). Drama, Romance, War".
    """
    if dataset.item_titles is None:
        return None
    attributes = dataset.item_attributes or [()] * (dataset.num_items + 1)
    texts = [""]
    for title, tokens in zip(dataset.item_titles[1:], attributes[1:]):
        years = [t.split("=", 1)[1] for t in tokens if t.startswith("year=")]
        genres = [t.split("=", 1)[1] for t in tokens if t.startswith("genre=")]
        text = f"{title} ({years[0]})" if years and title else title
        if genres:
            text = f"{text}. {', '.join(genres)}" if text else ", ".join(genres)
        texts.append(text)
    return texts
