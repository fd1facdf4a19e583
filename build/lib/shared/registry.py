"""Name → class registries (fusions, consistency measures, request policies, SRMs): one lookup
with one error message for all of them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def lookup(registry: Mapping[str, T], kind: str, name: str) -> T:
    """`registry[name]`, or ValueError naming the valid names.

    Args:
        registry: the names and what they stand for.
        kind: what a name names ("fusion", "policy", ...), for the message.
    """
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; valid names: {', '.join(sorted(registry))}")
    return registry[name]


def build(registry: Mapping[str, type[T]], kind: str, name: str, **kwargs: Any) -> T:
    """An instance of the class registered under `name`, built with `kwargs`.

    Raises:
        ValueError: unknown name (the message lists the valid ones), unknown field or bad value.
    """
    cls = lookup(registry, kind, name)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"bad arguments for {kind} {name!r}: {err}") from None
