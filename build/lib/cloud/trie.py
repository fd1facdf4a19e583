"""A prefix trie over the token sequences of all item identifiers, in flat numpy arrays.

Decoding walks the trie: from a beam's node only the tokens of its children are allowed, so
every finished beam is a real item. The trie is prefix-free (every item ends at a leaf); where
the identifiers alone are not (sequential "12" is a prefix of "123"), an EOS token ends each.

Per request, items of the history are masked by counting: `counts[b, node]` is the number of
still-allowed items below `node`; excluding an item decrements every node on its path, and a
node with count 0 is never entered. So beams never waste width on excluded subtrees, and a beam
search with at least N beams always finds N distinct allowed items.

Letters in shape comments: B requests, R beam rows, E trie edges, M nodes, P path length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ItemTrie:
    """Children of each node in CSR form, plus per-item paths for masking.

    Attributes:
        child_ptr: `[M + 1]` edges of node m are `child_ptr[m]:child_ptr[m + 1]`.
        edge_token: `[E]` token id of each edge.
        edge_child: `[E]` node an edge leads to.
        node_item: `[M + 1]` item id at a leaf, 0 elsewhere (the last entry is a sink node).
        leaf_count: `[M + 1]` items below each node (0 for the sink).
        item_path: `[num_items + 1, P]` nodes from the root's child to the leaf; padded with the
            sink index M so that masking can update all items at once.
        max_depth: longest identifier in tokens (= decoding steps).
    """

    child_ptr: np.ndarray
    edge_token: np.ndarray
    edge_child: np.ndarray
    node_item: np.ndarray
    leaf_count: np.ndarray
    item_path: np.ndarray
    max_depth: int

    @property
    def num_nodes(self) -> int:
        return len(self.child_ptr) - 1

    @property
    def sink(self) -> int:
        return self.num_nodes

    def allowed_counts(self, excluded: Sequence[np.ndarray]) -> np.ndarray:
        """`[B, M + 1]` allowed items below each node, one row per request.

        Args:
            excluded: per request, item ids (1-based) that must not be generated; repeats are fine.
        """
        counts = np.tile(self.leaf_count, (len(excluded), 1))
        for row, items in enumerate(excluded):
            items = np.unique(np.asarray(items, dtype=np.int64))
            # [n, P] -> flat node ids; the sink absorbs the padding, duplicates are summed.
            np.subtract.at(counts[row], self.item_path[items].ravel(), 1)
        counts[:, self.sink] = 0
        return counts

    def children(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All edges out of `nodes` (`[R]`), flattened.

        Returns:
            `(row, token, child)`, each `[C]`: the row in `nodes` an edge leaves from, its token,
            and the node it reaches; rows appear in order.
        """
        starts = self.child_ptr[nodes]
        lengths = self.child_ptr[nodes + 1] - starts
        row = np.repeat(np.arange(len(nodes)), lengths)
        # position of each edge inside its row's range
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        edge = np.repeat(starts, lengths) + offsets
        return row, self.edge_token[edge], self.edge_child[edge]


def build_trie(token_seqs: Sequence[Sequence[int]]) -> ItemTrie:
    """Build the trie of items 1..len(token_seqs) from their token sequences.

    Args:
        token_seqs: token ids of item i at index i - 1; must be non-empty, distinct and
            prefix-free (append an end token where needed, see `needs_end_token`).
    Raises:
        ValueError: an empty, duplicate or prefix sequence.
    """
    children: list[dict[int, int]] = [{}]
    node_item = [0]
    paths: list[list[int]] = []
    for item, seq in enumerate(token_seqs, start=1):
        if len(seq) == 0:
            raise ValueError(f"item {item} has an empty token sequence")
        node, path = 0, []
        for token in seq:
            if node_item[node]:
                raise ValueError(f"item {node_item[node]}'s tokens are a prefix of item {item}'s")
            nxt = children[node].get(int(token))
            if nxt is None:
                nxt = len(children)
                children[node][int(token)] = nxt
                children.append({})
                node_item.append(0)
            node = nxt
            path.append(node)
        if children[node] or node_item[node]:
            raise ValueError(f"item {item}'s tokens are a prefix of (or equal to) another item's")
        node_item[node] = item
        paths.append(path)
    return _pack(children, node_item, paths)


def _pack(children: list[dict[int, int]], node_item: list[int], paths: list[list[int]]) -> ItemTrie:
    """Turn the dict-of-children trie into flat arrays."""
    num_nodes = len(children)
    lengths = np.array([len(c) for c in children], dtype=np.int64)
    child_ptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    edges = [(tok, child) for c in children for tok, child in sorted(c.items())]
    edge_token = np.array([t for t, _ in edges], dtype=np.int64)
    edge_child = np.array([c for _, c in edges], dtype=np.int64)
    max_depth = max(len(p) for p in paths)
    item_path = np.full((len(paths) + 1, max_depth), num_nodes, dtype=np.int64)
    for item, path in enumerate(paths, start=1):
        item_path[item, : len(path)] = path
    leaf_count = np.zeros(num_nodes + 1, dtype=np.int64)
    np.add.at(leaf_count, item_path[1:].ravel(), 1)
    leaf_count[0] = len(paths)  # the root is on no path but holds every item
    leaf_count[num_nodes] = 0
    return ItemTrie(
        child_ptr=child_ptr,
        edge_token=edge_token,
        edge_child=edge_child,
        node_item=np.append(np.asarray(node_item, dtype=np.int64), 0),
        leaf_count=leaf_count,
        item_path=item_path,
        max_depth=max_depth,
    )


def needs_end_token(token_seqs: Sequence[Sequence[int]]) -> bool:
    """True when some identifier's tokens are a proper prefix of another's (e.g. "1" and "12")."""
    ordered = sorted(tuple(s) for s in token_seqs)
    return any(b[: len(a)] == a for a, b in zip(ordered, ordered[1:]))
