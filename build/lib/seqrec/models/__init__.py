"""The on-device small recommendation models (SRMs) and the registry that names them.

The registry is explicit (no import-time discovery), so a model's name in a checkpoint or on
the command line always maps to the same class.
"""

from __future__ import annotations

from typing import Any

from seqrec.models.base import SequentialRecommender, SRMConfig
from seqrec.models.din import DIN, DINConfig
from seqrec.models.gru4rec import GRU4Rec, GRU4RecConfig
from seqrec.models.sasrec import SASRec, SASRecConfig
from seqrec.models.ttt4rec import TTT4Rec, TTT4RecConfig
from shared import registry

MODEL_REGISTRY: dict[str, type[SequentialRecommender]] = {
    "ttt4rec": TTT4Rec,
    "sasrec": SASRec,
    "gru4rec": GRU4Rec,
    "din": DIN,
}


def get_model_class(name: str) -> type[SequentialRecommender]:
    """The SRM class registered under `name`.

    Raises:
        ValueError: `name` is not registered; the message lists the valid names.
    """
    return registry.lookup(MODEL_REGISTRY, "model name", name)


def build_model(name: str, **config_kwargs: Any) -> SequentialRecommender:
    """Build a freshly initialised SRM from its name and config fields.

    Args:
        name: a key of `MODEL_REGISTRY`, e.g. "sasrec".
        **config_kwargs: fields of that model's config class (e.g. `num_items=100`).
    Returns:
        The model, in training mode.
    Raises:
        ValueError: unknown model name, a field the config does not have, or a bad value.
    """
    model_class = get_model_class(name)
    config_class = model_class.config_class
    try:
        config = config_class(**config_kwargs)
    except TypeError as err:
        raise ValueError(
            f"bad config for model {name!r} ({config_class.__name__}): {err}"
        ) from None
    return model_class(config)


__all__ = [
    "DIN",
    "MODEL_REGISTRY",
    "DINConfig",
    "GRU4Rec",
    "GRU4RecConfig",
    "SASRec",
    "SASRecConfig",
    "SRMConfig",
    "SequentialRecommender",
    "TTT4Rec",
    "TTT4RecConfig",
    "build_model",
    "get_model_class",
]
