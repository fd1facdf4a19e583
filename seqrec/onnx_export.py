"""Export a stateful SRM's per-click step and candidate scorer (TTT4Rec, GRU4Rec) as loop-free
ONNX graphs, with one contract for every model: the device runs them without knowing which.

The step graph takes the carried state as explicit inputs and returns the new state and
the click's surprise (`seqrec.models.surprise`), so a runtime needs nothing but the graph
and the state bytes; the mini-batch commit is a `Where` on `pos == M − 1`, never control
flow. The scorer reads item features from a table
precomputed at export time (embedding → MLP for every item), so a rerank is one gather and
one batched dot product.

Letters used in shape comments:
    B  batch (users)    C  candidates    D  hidden width    I  num_items + 1
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from seqrec.models.base import SequentialRecommender
from seqrec.models.ttt4rec import TTT4RecState
from shared.device_format import (
    CANDIDATES_INPUT,
    CATALOGUE_SURPRISE_KEY,
    CONFIG_KEY,
    FEATURES_INPUT,
    INIT_STATE_KEY,
    ITEMS_INPUT,
    SCORES_OUTPUT,
    SURPRISE_OUTPUT,
    state_output_names,
)

OPSET = 18  # >= 17 for LayerNormalization; 18 is what the torch exporter emits natively
FORBIDDEN_OPS = frozenset({"Loop", "Scan", "If", "SequenceMap"})


class _StepGraph(nn.Module):
    """`(state tensors…, items [B], candidates [B, C]) -> (new state tensors…, surprise [B, 5],
    scores [B, C])`; `feature_out` is `F_s`. The item-feature table is a constant."""

    def __init__(self, model: SequentialRecommender, catalogue: bool) -> None:
        super().__init__()
        self.model = model
        self.catalogue = catalogue
        self.state_class = type(model.init_state(1))
        self.register_buffer("table", model.all_item_features())  # [I, D]

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        *tensors, items, candidates = inputs
        state = self.state_class(*tensors)
        new_state, _, surprise, scores = self.model.click(
            state, items, candidates, self.table, self.catalogue
        )
        return (*new_state.tensors(), surprise, scores)


class _ScorerGraph(nn.Module):
    """`(F_s [B, D], candidates [B, C]) -> scores [B, C]` against a fixed item-feature table."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)  # [I, D]

    def forward(self, features: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        targets = self.table[candidates]  # [B, C] -> [B, C, D]
        return (targets @ features.unsqueeze(-1)).squeeze(-1)  # [B, C, D] @ [B, D, 1] -> [B, C]


def _export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: dict[str, dict[int, torch.export.Dim]],
) -> None:
    # The exporter logs a warning per torchvision operator it cannot register when torchvision
    # is not installed; the device graphs use none of them.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # Notes from inside torch's exporter that say nothing about our graph: sharing one
            # Dim across inputs is intended, and the LeafSpec deprecation is torch's own call.
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
            warnings.filterwarnings(
                "ignore", message=".*treespec, LeafSpec.*", category=FutureWarning
            )
            torch.onnx.export(
                module.eval(),
                args,
                str(path),
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
                opset_version=OPSET,
                dynamo=True,
                external_data=False,  # one self-contained file; the device models are small
                verbose=False,
            )
    finally:
        registration.setLevel(level)


def _frozen_copy(model: nn.Module) -> nn.Module:
    """A float32, eval-mode copy, so exporting never changes the caller's model."""
    return copy.deepcopy(model).float().eval()


def _check_loop_free(path: Path) -> onnx.ModelProto:
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    found = sorted({node.op_type for node in graph.graph.node} & FORBIDDEN_OPS)
    if found:
        raise RuntimeError(f"exported graph {path} contains control flow: {found}")
    return graph


def export_step(model: SequentialRecommender, path: str | Path, catalogue: bool = True) -> Path:
    """Write the one-click step graph; the model's initial state and config go in metadata.

    Inputs: the state's tensors (`TTT4RecState.names()`: weight, bias, grad_weight,
    grad_bias, pos, feature, recent; `GRU4RecState.names()`: hidden, feature, recent; batch
    dimension `batch` dynamic), `items [B]` int64 and `candidates [B, C]` int64 (the held
    list; C may be 0). Outputs: the state tensors suffixed `_out` (`feature_out` is `F_s`),
    `surprise [B, 5]`, and `scores [B, C]` of the candidates under the new state: a click and
    the next decision's scores in one run.

    Args:
        model: a model that carries a state (`stateful`); exported in eval mode, float32.
        path: destination `.onnx` file; parent folders are created.
        catalogue: compute the surprise columns that score the whole catalogue (surprisal
            and rank share); False leaves them NaN and the graph skips that product.
    Returns:
        The path written.
    Raises:
        ValueError: the model carries no state.
        RuntimeError: if the exported graph contains control-flow operators.
    """
    if not getattr(model, "stateful", False):
        raise ValueError(f"a {model.name} model carries no state: it has no step graph")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = _frozen_copy(model)
    state = model.init_state(2)
    if isinstance(state, TTT4RecState):
        state.pos = torch.tensor([0, model.config.mini_batch_size - 1])  # both commit branches
    items = torch.tensor([1, 0])
    candidates = torch.tensor([[1, 2, 3], [4, 5, 6]])
    state_names = list(state.names())
    names = [*state_names, ITEMS_INPUT, CANDIDATES_INPUT]
    batch = torch.export.Dim("batch")
    dynamic = {name: {0: batch} for name in names}
    dynamic[CANDIDATES_INPUT] = {0: batch, 1: torch.export.Dim("count")}
    outputs = [*state_output_names(state_names), SURPRISE_OUTPUT, SCORES_OUTPUT]
    with torch.no_grad():
        args = (*state.tensors(), items, candidates)
        _export(
            _StepGraph(model, catalogue),
            args,
            path,
            names,
            outputs,
            {"inputs": tuple(dynamic[n] for n in names)},
        )
    graph = _check_loop_free(path)
    init_bytes = model.init_state(1).to_bytes()
    metadata = {
        INIT_STATE_KEY: base64.b64encode(init_bytes).decode("ascii"),
        CONFIG_KEY: json.dumps({"model": model.name, **model.config.to_dict()}),
        CATALOGUE_SURPRISE_KEY: "1" if catalogue else "0",
    }
    for key, value in metadata.items():
        graph.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.save(graph, str(path))
    return path


def export_scorer(model: SequentialRecommender, path: str | Path) -> Path:
    """Write the candidate scorer: `features [B, D]`, `candidates [B, C]` -> `scores [B, C]`.

    Args:
        model: the SRM whose item features (`all_item_features`: TTT4Rec's embedding → MLP,
            GRU4Rec's embedding) are tabulated.
        path: destination `.onnx` file; parent folders are created.
    Returns:
        The path written.
    Raises:
        RuntimeError: if the exported graph contains control-flow operators.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = _frozen_copy(model)
    with torch.no_grad():
        table = model.all_item_features()  # [I, D]
        features = torch.zeros(2, model.config.hidden_size)
        candidates = torch.ones(2, 3, dtype=torch.long)
        batch, count = torch.export.Dim("batch"), torch.export.Dim("candidates")
        dynamic = {FEATURES_INPUT: {0: batch}, CANDIDATES_INPUT: {0: batch, 1: count}}
        names = [FEATURES_INPUT, CANDIDATES_INPUT]
        _export(_ScorerGraph(table), (features, candidates), path, names, [SCORES_OUTPUT], dynamic)
    _check_loop_free(path)
    return path
