"""Load a saved generator folder whatever its kind (the server, the CLI and the experiments
call this, so they serve either generator)."""

from __future__ import annotations

from pathlib import Path

from cloud.base import GeneratorBase, read_meta
from cloud.generator import CandidateGenerator
from cloud.item_lm import ItemSequenceGenerator

KINDS: dict[str, type] = {"item-lm": ItemSequenceGenerator, "prompt": CandidateGenerator}


def load_generator(folder: str | Path) -> GeneratorBase:
    """`from_pretrained` of the kind recorded in the folder's `generator.json`.

    Raises:
        FileNotFoundError: the folder or one of its parts is missing.
        ValueError: an unknown kind or format.
    """
    meta, _ = read_meta(folder)
    kind = meta.get("kind", "prompt")  # folders from before the item LM have no kind
    if kind not in KINDS:
        raise ValueError(f"{folder}: unknown generator kind {kind!r} (known: {sorted(KINDS)})")
    return KINDS[kind].from_pretrained(folder)
