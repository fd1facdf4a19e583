"""Item identifiers: how an item id becomes the text the language model reads and writes.

- sequential (P5 / OpenP5): items are numbered 1, 2, 3, … in order of first appearance in the
  training sequences (user by user, oldest click first), so items that co-occur early get
  numbers that share leading digits; the number is written as digit tokens. Items that never
  appear in training get the numbers after that, in item-id order.
- atomic: one new token `<item_k>` per item.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cloud.base import read_json

INDEX_FILE = "item_index.json"


@dataclass(frozen=True)
class ItemIndex:
    """Identifier text of every item.

    Attributes:
        scheme: "sequential" or "atomic".
        identifiers: index i = identifier of item i; index 0 (padding) is "".
    """

    scheme: str
    identifiers: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.identifiers or self.identifiers[0] != "":
            raise ValueError("identifiers[0] must be '' (item 0 is padding)")
        if len(set(self.identifiers)) != len(self.identifiers):
            raise ValueError("item identifiers must be distinct")

    @property
    def num_items(self) -> int:
        return len(self.identifiers) - 1

    @property
    def separator(self) -> str:
        # Digit identifiers need a token between them, or "12 45" would read as 1 2 4 5.
        return " , " if self.scheme == "sequential" else " "

    def render(self, items: Sequence[int]) -> str:
        """The history as prompt text, e.g. "12 , 45 , 78" or "<item_12> <item_45>"."""
        return self.separator.join(self.identifiers[int(i)] for i in items)

    def save(self, folder: str | Path) -> None:
        data = {"scheme": self.scheme, "identifiers": list(self.identifiers)}
        Path(folder, INDEX_FILE).write_text(json.dumps(data))

    @classmethod
    def load(cls, folder: str | Path) -> ItemIndex:
        path = Path(folder, INDEX_FILE)
        data = read_json(path)
        if not isinstance(data, dict) or not {"scheme", "identifiers"} <= data.keys():
            raise ValueError(f"{path}: not an item index (needs 'scheme' and 'identifiers')")
        return cls(scheme=data["scheme"], identifiers=tuple(data["identifiers"]))


def atomic_token(item: int) -> str:
    return f"<item_{item}>"


def build_item_index(
    scheme: str, train_sequences: Sequence[np.ndarray], num_items: int
) -> ItemIndex:
    """Build the identifiers of items 1..num_items.

    Args:
        scheme: "sequential" or "atomic".
        train_sequences: per user, training items in time order (sequential numbering).
        num_items: catalogue size.
    Raises:
        ValueError: unknown scheme, num_items < 1, or an item id outside 1..num_items.
    """
    if num_items < 1:
        raise ValueError(f"num_items must be >= 1, got {num_items}")
    if scheme == "atomic":
        return ItemIndex("atomic", ("",) + tuple(atomic_token(i) for i in range(1, num_items + 1)))
    if scheme != "sequential":
        raise ValueError(f"unknown indexing scheme {scheme!r}")
    order = _first_appearance_order(train_sequences, num_items)
    number = np.zeros(num_items + 1, dtype=np.int64)
    number[order] = np.arange(1, num_items + 1)
    return ItemIndex("sequential", ("",) + tuple(str(n) for n in number[1:]))


def _first_appearance_order(train_sequences: Sequence[np.ndarray], num_items: int) -> np.ndarray:
    """Item ids in order of first appearance, then the never-seen ones in id order."""
    if train_sequences:
        flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in train_sequences])
    else:
        flat = np.zeros(0, dtype=np.int64)
    if flat.size and (flat.min() < 1 or flat.max() > num_items):
        raise ValueError(f"training items must lie in 1..{num_items}")
    seen, first = np.unique(flat, return_index=True)
    seen_in_order = seen[np.argsort(first, kind="stable")]
    unseen = np.setdiff1d(np.arange(1, num_items + 1), seen, assume_unique=True)
    return np.concatenate([seen_in_order, unseen])
