"""Load a saved generator folder whatever its kind (the server, the CLI and the experiments
call this, so they serve either generator)."""

from __future__ import annotations

from pathlib import Path

from cloud.base import GeneratorBase, read_meta
from cloud.generator import CandidateGenerator
from cloud.item_lm import ItemSequenceGenerator

KINDS: dict[str, type] = {"item-lm": ItemSequenceGenerator, "prompt": CandidateGenerator}


def check_generator(folder: str | Path, verify: bool = True) -> type[GeneratorBase]:
    """Check a generator folder without loading the model: the manifest (every file's
    SHA-256) and `generator.json`. Returns the generator class that loads it.

    Raises:
        FileNotFoundError: the folder or one of its parts is missing.
        ValueError: a file differs from the manifest, is not JSON, or names an unknown kind
            or format.
    """
    meta, _ = read_meta(folder, verify=verify)
    kind = meta.get("kind", "prompt")  # folders from before the item LM have no kind
    if kind not in KINDS:
        raise ValueError(f"{folder}: unknown generator kind {kind!r} (known: {sorted(KINDS)})")
    return KINDS[kind]


def load_generator(folder: str | Path, verify: bool = True) -> GeneratorBase:
    """`from_pretrained` of the kind recorded in the folder's `generator.json`, strictly.

    Args:
        verify: check the folder against its manifest (False: the caller just did, with
            `check_generator`).
    Raises:
        FileNotFoundError: the folder or one of its parts is missing.
        ValueError: see `check_generator`; also weights that cannot be read or do not fit the
            config (a missing, unexpected or mis-shaped tensor).
    """
    return check_generator(folder, verify).from_pretrained(folder, verify=False)


def place_generator(generator: GeneratorBase, device: str = "auto") -> GeneratorBase:
    """`generator` on `device`: "cpu", "cuda[:N]", or "auto" (a GPU when torch sees one and
    the generator's kind can use it; a CPU-only kind stays on the CPU).

    Raises:
        ValueError: an unknown device name, CUDA asked for and absent, or a GPU asked for a
            kind that runs on the CPU only.
    """
    from seqrec.training import resolve_device

    if device == "auto" and not generator.accelerated:
        return generator
    return generator.to(resolve_device(device))
