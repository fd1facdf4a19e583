"""What the replay caches are keyed by: the generator, the SRM and the data set."""

from __future__ import annotations

import json
from typing import Any

from shared.cache import digest, weights_digest


def generator_fingerprint(generator: Any) -> str:
    """`model_version` plus a hash of the decoding config: both decide what lists come out."""
    version = str(getattr(generator, "model_version", "") or type(generator).__name__)
    config = getattr(generator, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        version += "+" + digest(config.to_dict())[:8]
    return version


def srm_fingerprint(model: Any) -> str:
    """`<name>-<hash of config and weights>` of a torch SRM (changes whenever they do)."""
    extra = str(getattr(model, "name", type(model).__name__))
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        extra += json.dumps(config.to_dict(), sort_keys=True, default=str)
    return f"{getattr(model, 'name', 'srm')}-{weights_digest(model.state_dict(), extra)[:12]}"


def dataset_label(dataset: Any, seed: int | None = None) -> str:
    """`name/users/items/interactions[/seed]`: the data-set part of a cache key."""
    sizes = f"{dataset.num_users}u/{dataset.num_items}i/{dataset.num_interactions}x"
    return f"{dataset.name}/{sizes}" + ("" if seed is None else f"/seed{seed}")
