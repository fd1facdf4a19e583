"""Trie-constrained beam search over a transformers model, batched over requests, KV cache on.

Why not `model.generate(num_beams=…, prefix_allowed_tokens_fn=…)`: it also works (see
`hf_beam_search`, kept for the latency benchmark), but it copies the encoder's cross-attention
cache for every beam at every step, runs a Python callback per beam, and may return
invalid sequences when fewer than `num_beams` valid continuations exist. The search here:

- keeps `K = num_beams` slots per request in a fixed `[B, K]` layout, so beams only move
  inside their request and the cross-attention cache (identical for all beams of a request)
  is expanded once and never reordered;
- takes every allowed edge of every beam from the trie (history items masked per request);
  an edge into a leaf finishes an item and does not take a beam slot, so `K >= N` beams always
  yield `N` distinct allowed items;
- scores a finished item with its sequence log-probability (sum of token log-probabilities
  under the full softmax), and stops early once no live beam can beat the N-th finished item
  (log-probabilities only fall as a sequence grows).

Letters in shape comments: B requests, K beams per request, R rows (= B or B*K), V vocabulary,
S prompt tokens, D model width, C candidate edges, N candidates per request.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DynamicCache, EncoderDecoderCache

from cloud.trie import ItemTrie


@dataclass
class SearchResult:
    """Ranked items per request: `items` `[B, N]` int64 and `scores` `[B, N]` float32."""

    items: np.ndarray
    scores: np.ndarray


class EncoderDecoderStepper:
    """Runs the encoder once and then one decoder token per step, for encoder–decoder models."""

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        self.model = model
        self.input_ids = input_ids  # [B, S], right-padded
        self.attention_mask = attention_mask  # [B, S]
        self.cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        self.expanded = False
        self.placeholder: torch.Tensor | None = None

    def start(self) -> torch.Tensor:
        """`[B, V]` log-probabilities of the first identifier token."""
        encoder_states = self.model.get_encoder()(
            input_ids=self.input_ids, attention_mask=self.attention_mask
        ).last_hidden_state  # [B, S, D]
        start_id = self.model.config.decoder_start_token_id
        tokens = torch.full((len(self.input_ids), 1), start_id, dtype=torch.long)
        return self._decode(tokens, encoder_states)

    def step(self, parents: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Append `tokens` `[R]` to the beams `parents` `[R]` (rows of the previous step)."""
        if not self.expanded:
            # First expansion, [B] -> [B*K] rows: copy both caches once.
            self.cache.reorder_cache(parents)
            self.attention_mask = self.attention_mask[parents]
            self.expanded = True
        else:
            # Beams move only inside their request, whose cross-attention rows are all equal.
            self.cache.self_attention_cache.reorder_cache(parents)
        if self.placeholder is None or len(self.placeholder) != len(parents):
            # The cached cross-attention keys/values are used; the decoder reads only the shape
            # of the encoder states, so a zero-stride view stands in for [R, S, D] at no cost.
            shape = (len(parents), self.input_ids.shape[1], self.model.config.d_model)
            self.placeholder = torch.zeros(()).expand(shape)
        return self._decode(tokens[:, None], self.placeholder)

    def _decode(self, tokens: torch.Tensor, encoder_states: torch.Tensor) -> torch.Tensor:
        out = self.model(
            encoder_outputs=(encoder_states,),
            attention_mask=self.attention_mask,
            decoder_input_ids=tokens,
            cache=self.cache,  # named `past_key_values` before transformers 5.24
            use_cache=True,
        )
        return F.log_softmax(out.logits[:, -1].float(), dim=-1)


class DecoderOnlyStepper:
    """Runs the prompt once (left-padded) and then one token per step, for decoder-only models."""

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        self.model = model
        self.input_ids = input_ids  # [B, S], left-padded
        self.attention_mask = attention_mask  # [B, S]
        self.cache = DynamicCache()
        self.next_position = torch.zeros(0, dtype=torch.long)

    def start(self) -> torch.Tensor:
        positions = (self.attention_mask.cumsum(-1) - 1).clamp(min=0)  # [B, S]
        self.next_position = positions[:, -1] + 1
        out = self.model(
            input_ids=self.input_ids,
            attention_mask=self.attention_mask,
            position_ids=positions,
            cache=self.cache,  # named `past_key_values` before transformers 5.24
            use_cache=True,
            logits_to_keep=1,
        )
        return F.log_softmax(out.logits[:, -1].float(), dim=-1)

    def step(self, parents: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        self.cache.reorder_cache(parents)
        ones = torch.ones(len(parents), 1, dtype=self.attention_mask.dtype)
        self.attention_mask = torch.cat([self.attention_mask[parents], ones], dim=1)
        positions = self.next_position[parents]  # [R]
        self.next_position = positions + 1
        out = self.model(
            input_ids=tokens[:, None],
            attention_mask=self.attention_mask,
            position_ids=positions[:, None],
            cache=self.cache,  # named `past_key_values` before transformers 5.24
            use_cache=True,
        )
        return F.log_softmax(out.logits[:, -1].float(), dim=-1)


@dataclass
class _Edges:
    """Allowed edges out of the live beams, flattened and grouped by request."""

    request: np.ndarray  # [C] request of each edge (non-decreasing)
    row: np.ndarray  # [C] beam row the edge leaves from
    token: np.ndarray  # [C] token id
    child: np.ndarray  # [C] node reached
    score: np.ndarray  # [C] sequence log-probability after the edge

    def subset(self, keep: np.ndarray) -> _Edges:
        return _Edges(
            *(getattr(self, f)[keep] for f in ("request", "row", "token", "child", "score"))
        )


def _allowed_edges(
    trie: ItemTrie,
    nodes: np.ndarray,
    row_request: np.ndarray,
    beam_scores: np.ndarray,
    log_probs: torch.Tensor,
    counts: np.ndarray,
) -> _Edges:
    """Every edge out of a live beam into a node that still holds an allowed item."""
    live = np.flatnonzero(np.isfinite(beam_scores))
    row, token, child = trie.children(nodes[live])
    row = live[row]
    request = row_request[row]
    ok = counts[request, child] > 0
    row, token, child, request = row[ok], token[ok], child[ok], request[ok]
    token_lp = log_probs[torch.from_numpy(row), torch.from_numpy(token)].numpy()
    return _Edges(request, row, token, child, beam_scores[row] + token_lp.astype(np.float64))


def _by_request(edges: _Edges, num_requests: int) -> tuple[np.ndarray, np.ndarray]:
    """Edge scores as a `[B, Cmax]` matrix (-inf padding) and each cell's edge index (-1)."""
    starts = np.searchsorted(edges.request, np.arange(num_requests))
    column = np.arange(len(edges.request)) - starts[edges.request]
    width = int(column.max()) + 1 if len(column) else 1
    scores = np.full((num_requests, width), -np.inf)
    index = np.full((num_requests, width), -1, dtype=np.int64)
    scores[edges.request, column] = edges.score
    index[edges.request, column] = np.arange(len(edges.request))
    return scores, index


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the `k` best cells of each row, best first (`[B, k]`, k <= width)."""
    values, columns = torch.topk(torch.from_numpy(scores), k, dim=1)
    return columns.numpy()


def _merge_finished(
    fin_scores: np.ndarray, fin_items: np.ndarray, leaves: _Edges, item_of: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the N best finished items per request: the old ones and the leaves just reached."""
    num_requests, n = fin_scores.shape
    if len(leaves.request) == 0:
        return fin_scores, fin_items
    scores, index = _by_request(leaves, num_requests)
    items = np.where(index >= 0, item_of[leaves.child[index]], 0)
    all_scores = np.concatenate([fin_scores, scores], axis=1)  # [B, N + Cmax]
    all_items = np.concatenate([fin_items, items], axis=1)
    best = _top(all_scores, n)
    return np.take_along_axis(all_scores, best, 1), np.take_along_axis(all_items, best, 1)


def _select_beams(
    inner: _Edges, num_requests: int, width: int, prev_width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The `width` best unfinished edges per request as `[B*K]` parents, tokens, nodes, scores.

    Requests with fewer edges get dead slots (score -inf) that point at the request's first
    row, so every row stays inside its own request.
    """
    scores, index = _by_request(inner, num_requests)
    k = min(width, scores.shape[1])
    best = _top(scores, k)
    chosen = np.take_along_axis(index, best, 1)  # [B, k], -1 where dead
    pad = np.full((num_requests, width - k), -1, dtype=np.int64)
    chosen = np.concatenate([chosen, pad], axis=1).ravel()  # [B*K]
    dead = chosen < 0
    first_row = np.repeat(np.arange(num_requests) * prev_width, width)
    parents = np.where(dead, first_row, inner.row[chosen])
    tokens = np.where(dead, 0, inner.token[chosen])
    nodes = np.where(dead, 0, inner.child[chosen])
    beam_scores = np.where(dead, -np.inf, inner.score[chosen])
    return parents, tokens, nodes, beam_scores


def trie_beam_search(
    stepper, trie: ItemTrie, counts: np.ndarray, n: int, num_beams: int
) -> SearchResult:
    """Beam search over the trie; returns the N best distinct allowed items per request.

    Args:
        stepper: an `EncoderDecoderStepper` or `DecoderOnlyStepper` over the batch of prompts.
        trie: the item trie.
        counts: `[B, M + 1]` allowed items below each node (`ItemTrie.allowed_counts`).
        n: candidates per request; each request must allow at least n items.
        num_beams: beam slots per request (raised to n if smaller).
    Returns:
        `SearchResult` with `[B, n]` items and scores, best first.
    Raises:
        RuntimeError: fewer than n items were found (the caller's checks should prevent it).
    """
    width = max(num_beams, n)
    log_probs = stepper.start()  # [B, V]
    num_requests = log_probs.shape[0]
    nodes = np.zeros(num_requests, dtype=np.int64)  # one root row per request
    row_request = np.arange(num_requests)
    beam_scores = np.zeros(num_requests)
    prev_width = 1
    fin_scores = np.full((num_requests, n), -np.inf)
    fin_items = np.zeros((num_requests, n), dtype=np.int64)
    for depth in range(trie.max_depth):
        edges = _allowed_edges(trie, nodes, row_request, beam_scores, log_probs, counts)
        is_leaf = trie.node_item[edges.child] > 0
        fin_scores, fin_items = _merge_finished(
            fin_scores, fin_items, edges.subset(is_leaf), trie.node_item
        )
        inner = edges.subset(~is_leaf)
        if depth == trie.max_depth - 1 or len(inner.request) == 0:
            break
        parents, tokens, nodes, beam_scores = _select_beams(inner, num_requests, width, prev_width)
        if _cannot_improve(beam_scores.reshape(num_requests, width), fin_scores):
            break
        log_probs = stepper.step(torch.from_numpy(parents), torch.from_numpy(tokens))
        row_request = np.repeat(np.arange(num_requests), width)
        prev_width = width
    if not np.isfinite(fin_scores).all():
        raise RuntimeError("beam search found fewer items than requested")
    return SearchResult(items=fin_items, scores=fin_scores.astype(np.float32))


def _cannot_improve(beam_scores: np.ndarray, fin_scores: np.ndarray) -> bool:
    """True when no live beam of any request can still beat its N-th finished item."""
    return bool((beam_scores.max(axis=1) <= fin_scores[:, -1]).all())


class TrieLogitsProcessor:
    """Masks `model.generate`'s beam scores to the trie (the `hf` search, for comparison).

    Each row's node is found by walking its generated tokens; at a leaf only EOS is allowed,
    at log-probability 0, so a finished item keeps its identifier's log-probability.
    """

    def __init__(
        self, trie: ItemTrie, counts: np.ndarray, num_beams: int, prompt_len: int, eos_id: int
    ):
        self.trie, self.counts, self.num_beams = trie, counts, num_beams
        self.prompt_len, self.eos_id = prompt_len, eos_id
        self.edges = {
            (int(node), int(tok)): int(child)
            for node in range(trie.num_nodes)
            for tok, child in zip(*_edges_of(trie, node))
        }

    def node_of(self, generated: list[int]) -> int | None:
        node = 0
        for token in generated:
            if self.trie.node_item[node] and token == self.eos_id:
                return node
            node = self.edges.get((node, token))
            if node is None:
                return None
        return node

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        mask = torch.full_like(scores, -torch.inf)
        for row, seq in enumerate(input_ids[:, self.prompt_len :].tolist()):
            node = self.node_of(seq)
            if node is None or self.trie.node_item[node]:  # finished (or broken): only EOS
                scores[row] = 0.0
                mask[row, self.eos_id] = 0.0
                continue
            _, token, child = self.trie.children(np.array([node]))
            ok = self.counts[row // self.num_beams, child] > 0
            mask[row, torch.from_numpy(token[ok])] = 0.0
        return scores + mask


def _edges_of(trie: ItemTrie, node: int) -> tuple[np.ndarray, np.ndarray]:
    span = slice(trie.child_ptr[node], trie.child_ptr[node + 1])
    return trie.edge_token[span], trie.edge_child[span]


def hf_beam_search(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    trie: ItemTrie,
    counts: np.ndarray,
    n: int,
    num_beams: int,
    eos_id: int,
) -> SearchResult:
    """`model.generate` beam search with `TrieLogitsProcessor`; invalid results get item 0.

    Kept to measure the custom search against (see benchmarks/llm_latency.py).
    """
    from transformers import LogitsProcessorList

    width = max(num_beams, n)
    encoder_decoder = model.config.is_encoder_decoder
    prompt_len = 1 if encoder_decoder else input_ids.shape[1]
    processor = TrieLogitsProcessor(trie, counts, width, prompt_len, eos_id)
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        num_beams=width,
        num_return_sequences=n,
        max_new_tokens=trie.max_depth + 1,
        length_penalty=0.0,
        early_stopping=True,
        do_sample=False,
        logits_processor=LogitsProcessorList([processor]),
        output_scores=True,
        return_dict_in_generate=True,
        eos_token_id=eos_id,
        pad_token_id=model.config.pad_token_id,
    )
    items = np.zeros(len(out.sequences), dtype=np.int64)
    for row, seq in enumerate(out.sequences[:, prompt_len:].tolist()):
        node = processor.node_of(seq)
        items[row] = trie.node_item[node] if node is not None else 0
    scores = out.sequences_scores.float().numpy()
    return SearchResult(items.reshape(-1, n), scores.reshape(-1, n).astype(np.float32))
