"""Run an exported stateful SRM's graphs under onnxruntime: the device's SRM, in numpy, without
torch.

`OnnxStepModel` offers `init_state`, `step`, `step_with_surprise`, `click`, `score_features`
and `encode` like the torch models that carry a state (TTT4Rec, GRU4Rec), on a carried
`OnnxState` (named numpy arrays in the format of `shared.device_format`; a state the torch
model wrote with `to_bytes` reads back with `OnnxState.from_bytes`). Which model it is never
matters: the state's tensors are the step graph's inputs besides the click and the
candidates, the initial state and the config come from its metadata, so the two `.onnx` files
are all a device needs.

Letters used in shape comments:
    B  batch (users)    L  history length    C  candidates    D  hidden width
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from shared.device_format import (
    CANDIDATES_INPUT,
    CATALOGUE_SURPRISE_KEY,
    CONFIG_KEY,
    FEATURE_STATE,
    FEATURES_INPUT,
    INIT_STATE_KEY,
    ITEMS_INPUT,
    SCORES_OUTPUT,
    STATE_NAMES,
    SURPRISE_OUTPUT,
    decode_any_state,
    encode_named_state,
    encode_state,
    state_output_names,
)

_ONNX_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64}


def session_options(num_threads: int = 1) -> ort.SessionOptions:
    """Session options for a device: `num_threads` intra-op threads, sequential execution.

    One thread is the default because a phone runs the reranker beside the app, and a
    one-click graph is too small to gain from more.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def as_array(value: Any, dtype: type) -> np.ndarray:
    """A C-contiguous `dtype` array of `value` (no copy when it already is one). Accepts any
    array-like, torch tensors included (through their `numpy()`), without importing torch."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    value = np.asarray(value)
    if value.dtype != dtype or not value.flags.c_contiguous:
        value = np.ascontiguousarray(value, dtype=dtype)
    return value


@dataclass(frozen=True)
class OnnxState:
    """The carried state of a batch of users: named numpy arrays, in the step graph's order."""

    names: tuple[str, ...]
    arrays: tuple[np.ndarray, ...]

    @property
    def feature(self) -> np.ndarray:
        """`[B, D]` F_s after the last click."""
        return self.arrays[self.names.index(FEATURE_STATE)]

    def tensors(self) -> tuple[np.ndarray, ...]:
        return self.arrays

    @classmethod
    def from_bytes(cls, data: bytes) -> OnnxState:
        """A state stored with `to_bytes` (or a torch model state's `to_bytes`), its tensors
        in the model's order (the step graph's inputs)."""
        arrays = decode_any_state(data)
        return cls(tuple(arrays), tuple(arrays.values()))

    def to_bytes(self) -> bytes:
        """TTT4Rec's state in its TTS2 format, any other model's as named tensors (STN1)."""
        arrays = dict(zip(self.names, self.arrays))
        return encode_state(arrays) if self.names == STATE_NAMES else encode_named_state(arrays)

    @classmethod
    def cat(cls, states: Sequence[OnnxState]) -> OnnxState:
        """Concatenate states of several user groups along the batch dimension."""
        if not states:
            raise ValueError("cat needs at least one state")
        if len({s.names for s in states}) > 1:
            raise ValueError("cannot concatenate the states of different models")
        parts = zip(*(s.arrays for s in states))
        return cls(states[0].names, tuple(np.concatenate(p) for p in parts))


class OnnxStepModel:
    """onnxruntime twin of a stateful SRM's device API (step + candidate scoring).

    Args:
        step_path: graph written by `seqrec.onnx_export.export_step`.
        scorer_path: graph written by `seqrec.onnx_export.export_scorer`.
        num_threads: intra-op threads per session (1 by default).
    Raises:
        ValueError: the step graph lacks the initial-state metadata, or its state does not
            match its inputs.
    """

    stateful = True

    def __init__(
        self, step_path: str | Path, scorer_path: str | Path, num_threads: int = 1
    ) -> None:
        options = session_options(num_threads)
        providers = ["CPUExecutionProvider"]
        self.step_session = ort.InferenceSession(str(step_path), options, providers=providers)
        self.scorer_session = ort.InferenceSession(str(scorer_path), options, providers=providers)
        metadata = self.step_session.get_modelmeta().custom_metadata_map
        if INIT_STATE_KEY not in metadata:
            raise ValueError(f"{step_path} has no {INIT_STATE_KEY!r} metadata; use export_step")
        inputs = self.step_session.get_inputs()
        state_inputs = [i for i in inputs if i.name not in (ITEMS_INPUT, CANDIDATES_INPUT)]
        self.state_names = tuple(i.name for i in state_inputs)
        self._dtypes = [_ONNX_DTYPES[i.type] for i in state_inputs]
        stored = OnnxState.from_bytes(base64.b64decode(metadata[INIT_STATE_KEY]))
        if set(stored.names) != set(self.state_names) or FEATURE_STATE not in self.state_names:
            raise ValueError(
                f"{step_path}: its initial state holds {stored.names}, its inputs "
                f"{self.state_names}"
            )
        arrays = dict(zip(stored.names, stored.arrays))
        self._init_state = OnnxState(
            self.state_names,
            tuple(arrays[n].astype(d) for n, d in zip(self.state_names, self._dtypes)),
        )
        self.config: dict[str, Any] = json.loads(metadata.get(CONFIG_KEY, "{}"))
        # whether the surprise scores the whole catalogue (else its nll and rank share are NaN)
        self.catalogue_surprise = metadata.get(CATALOGUE_SURPRISE_KEY, "1") == "1"
        self._output_names = [
            *state_output_names(self.state_names),
            SURPRISE_OUTPUT,
            SCORES_OUTPUT,
        ]

    @property
    def model_name(self) -> str:
        """The exported model's name (graphs from before the name was stored are TTT4Rec's)."""
        return str(self.config.get("model", "ttt4rec"))

    @property
    def num_items(self) -> int | None:
        size = self.config.get("num_items")
        return int(size) if size else None

    def init_state(self, batch_size: int = 1) -> OnnxState:
        """Fresh state for `batch_size` users with no clicks yet."""
        return OnnxState.cat([self._init_state] * batch_size)

    def step(self, state: OnnxState, items: Any) -> tuple[OnnxState, np.ndarray]:
        """Fold one click per user into the state (0 = no click, state kept).

        Args:
            state: the users' carried state.
            items: `[B]` clicked item ids.
        Returns:
            `(state, F_s)` with `F_s` a `[B, D]` float32 array.
        """
        new_state, features, _ = self.step_with_surprise(state, items)
        return new_state, features

    def step_with_surprise(
        self, state: OnnxState, items: Any
    ) -> tuple[OnnxState, np.ndarray, np.ndarray]:
        """`step`, plus the `[B, 5]` surprise of each click (one graph run computes both)."""
        items = as_array(items, np.int64)
        no_candidates = np.zeros((len(items), 0), dtype=np.int64)
        new_state, features, surprise, _ = self.click(state, items, no_candidates)
        return new_state, features, surprise

    def click(
        self, state: OnnxState, items: Any, candidates: Any
    ) -> tuple[OnnxState, np.ndarray, np.ndarray, np.ndarray]:
        """One click per user, in one graph run: the new state, `F_s [B, D]`, the click's
        surprise `[B, 5]` and the logits `[B, C]` of `candidates [B, C]` under the new state."""
        if state.names != self.state_names:
            raise ValueError(f"a state of {state.names}, this model carries {self.state_names}")
        feeds = {
            name: as_array(array, dtype)
            for name, dtype, array in zip(self.state_names, self._dtypes, state.arrays)
        }
        feeds[ITEMS_INPUT] = as_array(items, np.int64)
        feeds[CANDIDATES_INPUT] = as_array(candidates, np.int64)
        *outputs, surprise, scores = self.step_session.run(self._output_names, feeds)
        new_state = OnnxState(self.state_names, tuple(outputs))
        return new_state, new_state.feature, surprise, scores

    def score_features(self, features: Any, items: Any) -> np.ndarray:
        """Logits `[B, C]` of candidate ids `items [B, C]` for user features `[B, D]`."""
        feeds = {
            FEATURES_INPUT: as_array(features, np.float32),
            CANDIDATES_INPUT: as_array(items, np.int64),
        }
        (scores,) = self.scorer_session.run([SCORES_OUTPUT], feeds)
        return scores

    def encode(self, history: Any) -> np.ndarray:
        """`F_s [B, D]` by stepping `history [B, L]` click by click (pads are skipped)."""
        history = as_array(history, np.int64)
        state = self.init_state(history.shape[0])
        features = state.feature
        for t in range(history.shape[1]):
            state, features = self.step(state, history[:, t])
        return features

    def score(self, history: Any, items: Any) -> np.ndarray:
        """Logits `[B, C]` of `items` after `history` (O(L) steps; devices keep the state)."""
        return self.score_features(self.encode(history), items)
