"""The torch SRMs behind the device session's runner interface (`device.session.SRMRunner`).

A device runs its SRM from a bundle with onnxruntime (`device.onnx_runtime`); the offline
tables, the model tables and the tests run the torch models themselves through these adapters,
which give the session the same numpy values:

- `TorchStatefulRunner`: a model that carries a state (TTT4Rec, GRU4Rec): one `step` per click.
- `HistoryRunner`: a model without one (SASRec, DIN), or one asked to read a window: re-reads
  the last `max_len` clicks to score.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from seqrec.models.surprise import DRIFT_WINDOW, catalogue_surprise, feature_drift


def catalogue_size(model: Any) -> int | None:
    """`num_items` of a torch SRM's config, None if it does not say."""
    size = getattr(getattr(model, "config", None), "num_items", None)
    return int(size) if size else None


class TorchStatefulRunner:
    """Adapter for a torch model with `init_state(B)`, `step_with_surprise` and `score_features`.

    The carried state is `(model_state, F_s)`; one click costs one `step`, whatever the history.
    """

    stateful = True

    def __init__(self, model: torch.nn.Module) -> None:
        for method in ("init_state", "step", "score_features"):
            if not callable(getattr(model, method, None)):
                raise ValueError(f"{type(model).__name__} has no {method}(); use HistoryRunner")
        self.model = model.eval()  # no dropout on the device
        self.num_items = catalogue_size(model)
        self._table: torch.Tensor | None = None  # F_t of every item, once (the model is frozen)

    def init_state(self) -> tuple[Any, torch.Tensor]:
        state = self.model.init_state(1)
        return state, state.feature

    @torch.no_grad()
    def step(self, state: tuple[Any, torch.Tensor], item: int) -> tuple[Any, torch.Tensor]:
        return self.model.step(state[0], torch.tensor([item], dtype=torch.long))

    @torch.no_grad()
    def item_table(self) -> torch.Tensor:
        """`[I, D]` F_t of every item, computed once (the model is frozen)."""
        if self._table is None:
            self._table = self.model.all_item_features()
        return self._table

    @torch.no_grad()
    def step_with_surprise(
        self, state: tuple[Any, torch.Tensor], history: np.ndarray, item: int
    ) -> tuple[tuple[Any, torch.Tensor], np.ndarray]:
        items = torch.tensor([item], dtype=torch.long)
        new_state, features, surprise = self.model.step_with_surprise(
            state[0], items, self.item_table()
        )
        return (new_state, features), surprise[0].numpy().astype(np.float64)

    @torch.no_grad()
    def score_items(
        self, state: tuple[Any, torch.Tensor], history: np.ndarray, items: np.ndarray
    ) -> np.ndarray:
        candidates = torch.as_tensor(np.asarray(items, dtype=np.int64))[None]  # [1, C]
        return self.model.score_features(state[1], candidates)[0].numpy().astype(np.float64)


class HistoryRunner:
    """Adapter for a model without carried state: re-reads the last `max_len` clicks.

    The state is None; `score_items` calls `model.score(history, items)`.
    """

    stateful = False

    def __init__(self, model: torch.nn.Module, max_len: int | None = None) -> None:
        if max_len is not None and max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.model = model.eval()  # no dropout on the device
        self.max_len = max_len or getattr(getattr(model, "config", None), "max_len", None)
        self.num_items = catalogue_size(model)
        self.drift_window = getattr(model.config, "drift_window", DRIFT_WINDOW)
        self._table: torch.Tensor | None = None  # F_t of every item, for the drift

    def init_state(self) -> None:
        return None

    def step(self, state: None, item: int) -> None:
        return None

    @torch.no_grad()
    def step_with_surprise(self, state: None, history: np.ndarray, item: int) -> tuple[None, Any]:
        """Surprise from one scoring of the whole catalogue with the history before the click
        (these models have no inner loss: its column is 0)."""
        size = self.num_items
        if not size:
            raise ValueError("the model's config does not give its catalogue size (num_items)")
        logits = torch.as_tensor(self.score_items(None, history, np.arange(1, size + 1)))
        logit = logits[item - 1 : item]  # [1]
        nll, rank = catalogue_surprise(logits[None], logit)
        if self._table is None:
            self._table = self.model.all_item_features().double()  # [I, D]
        recent = np.asarray(history, dtype=np.int64)[-self.drift_window :]
        drift = feature_drift(self._table[[item]], self._table[torch.as_tensor(recent)][None])
        row = torch.cat([logit, nll, rank, drift, torch.zeros(1, dtype=logit.dtype)])
        return None, row.numpy().astype(np.float64)

    @torch.no_grad()
    def score_items(self, state: None, history: np.ndarray, items: np.ndarray) -> np.ndarray:
        recent = np.asarray(history, dtype=np.int64)
        recent = recent[-self.max_len :] if self.max_len else recent
        if recent.size == 0:
            recent = np.zeros(1, dtype=np.int64)  # all padding: the model's empty-history answer
        hist = torch.as_tensor(recent)[None]  # [1, L]
        candidates = torch.as_tensor(np.asarray(items, dtype=np.int64))[None]  # [1, C]
        return self.model.score(hist, candidates)[0].numpy().astype(np.float64)


def make_runner(model: torch.nn.Module) -> TorchStatefulRunner | HistoryRunner:
    """The session adapter of a torch SRM: `TorchStatefulRunner` for models that carry a state
    (`stateful = True`), `HistoryRunner` for the others (the onnxruntime model has its own,
    `device.session.StatefulRunner`)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{type(model).__name__} is not a torch SRM; use its own runner")
    if getattr(model, "stateful", False):
        return TorchStatefulRunner(model)
    return HistoryRunner(model)
