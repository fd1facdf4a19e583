"""Run exported TTT4Rec graphs under onnxruntime with the torch model's device interface.

`OnnxTTT4Rec` offers `init_state`, `step`, `score_features` and `encode` like `TTT4Rec`,
and carries the same `TTT4RecState` (torch tensors, shared with numpy without copying), so
a device can swap one for the other. The initial state and config come from the step
graph's metadata, so the two `.onnx` files are all a device needs.

Letters used in shape comments:
    B  batch (users)    L  history length    C  candidates    D  hidden width
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from device.models.ttt4rec import TTT4RecState
from device.onnx_export import (
    CANDIDATES_INPUT,
    CONFIG_KEY,
    FEATURES_INPUT,
    INIT_STATE_KEY,
    ITEMS_INPUT,
    SCORES_OUTPUT,
    SURPRISE_OUTPUT,
    state_output_names,
)


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


def _as_numpy(value: torch.Tensor | np.ndarray, dtype: type) -> np.ndarray:
    """A C-contiguous `dtype` array sharing memory with `value` whenever it can (per click)."""
    if isinstance(value, torch.Tensor):
        if value.requires_grad or value.device.type != "cpu":
            value = value.detach().cpu()
        value = value.numpy()
    if value.dtype != dtype or not value.flags.c_contiguous:
        value = np.ascontiguousarray(value, dtype=dtype)
    return value


class OnnxTTT4Rec:
    """onnxruntime twin of `TTT4Rec`'s device API (step + candidate scoring).

    Args:
        step_path: graph written by `export_step`.
        scorer_path: graph written by `export_scorer`.
        num_threads: intra-op threads per session (1 by default).
    Raises:
        ValueError: if the step graph lacks the initial-state metadata.
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
        self._init_state = TTT4RecState.from_bytes(base64.b64decode(metadata[INIT_STATE_KEY]))
        self.config: dict[str, Any] = json.loads(metadata.get(CONFIG_KEY, "{}"))
        self._state_names = TTT4RecState.names()
        self._dtypes = [np.int64 if name == "pos" else np.float32 for name in self._state_names]
        self._output_names = [*state_output_names(), SURPRISE_OUTPUT]

    def init_state(self, batch_size: int = 1) -> TTT4RecState:
        """Fresh state for `batch_size` users with no clicks yet."""
        return TTT4RecState.cat([self._init_state] * batch_size)

    def step(
        self, state: TTT4RecState, items: torch.Tensor | np.ndarray
    ) -> tuple[TTT4RecState, torch.Tensor]:
        """Fold one click per user into the state (0 = no click, state kept).

        Args:
            state: the users' carried state.
            items: `[B]` clicked item ids.
        Returns:
            `(state, F_s)` with `F_s` a `[B, D]` float32 tensor.
        """
        new_state, features, _ = self.step_with_surprise(state, items)
        return new_state, features

    def step_with_surprise(
        self, state: TTT4RecState, items: torch.Tensor | np.ndarray
    ) -> tuple[TTT4RecState, torch.Tensor, torch.Tensor]:
        """`step`, plus the `[B, 5]` surprise of each click (one graph run computes both)."""
        feeds = {
            name: _as_numpy(tensor, dtype)
            for name, dtype, tensor in zip(self._state_names, self._dtypes, state.tensors())
        }
        feeds[ITEMS_INPUT] = _as_numpy(items, np.int64)
        *outputs, surprise = self.step_session.run(self._output_names, feeds)
        new_state = TTT4RecState(*(torch.from_numpy(array) for array in outputs))
        return new_state, new_state.feature, torch.from_numpy(surprise)

    def score_features(
        self, features: torch.Tensor | np.ndarray, items: torch.Tensor | np.ndarray
    ) -> torch.Tensor:
        """Logits `[B, C]` of candidate ids `items [B, C]` for user features `[B, D]`."""
        feeds = {
            FEATURES_INPUT: _as_numpy(features, np.float32),
            CANDIDATES_INPUT: _as_numpy(items, np.int64),
        }
        (scores,) = self.scorer_session.run([SCORES_OUTPUT], feeds)
        return torch.from_numpy(scores)

    def encode(self, history: torch.Tensor | np.ndarray) -> torch.Tensor:
        """`F_s [B, D]` by stepping `history [B, L]` click by click (pads are skipped)."""
        history = _as_numpy(history, np.int64)
        state = self.init_state(history.shape[0])
        features = state.feature
        for t in range(history.shape[1]):
            state, features = self.step(state, history[:, t])
        return features

    def score(
        self, history: torch.Tensor | np.ndarray, items: torch.Tensor | np.ndarray
    ) -> torch.Tensor:
        """Logits `[B, C]` of `items` after `history` (O(L) steps; devices keep the state)."""
        return self.score_features(self.encode(history), items)
