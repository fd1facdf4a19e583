"""The npz disk cache and the fingerprints that key it (replay lists, SRM tables,
collaborative-training lists all use it).

A cache file stores its key (JSON) beside the arrays; a file whose key differs, or that is
truncated or foreign, is treated as absent and recomputed. Writes are atomic (a temporary
file, then rename), so a crash never leaves half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def digest(payload: Any) -> str:
    """20 hex digits of a SHA-256 over the JSON of `payload` (keys sorted)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def sequences_digest(sequences: Sequence[np.ndarray]) -> str:
    """16 hex digits of a SHA-256 over item sequences (their lengths count too)."""
    h = hashlib.sha256()
    for seq in sequences:
        h.update(np.asarray(seq, dtype=np.int64).tobytes() + b"|")
    return h.hexdigest()[:16]


def weights_digest(state: Mapping[str, Any], extra: str = "") -> str:
    """Full SHA-256 hex digest over named tensors (e.g. a torch `state_dict()`), by name."""
    h = hashlib.sha256(extra.encode())
    for name, tensor in sorted(state.items()):
        h.update(name.encode())
        h.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def load_npz(path: Path, key: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The arrays of a cache file whose stored key equals `key`; None if absent or stale."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if str(npz["key"]) != json.dumps(key, sort_keys=True):
                return None
            return {name: npz[name] for name in npz.files if name != "key"}
    except (OSError, ValueError, KeyError):  # a truncated or foreign file: recompute it
        return None


def save_npz(path: Path, key: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Write atomically (a temporary file, then rename), so a crash leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        np.savez(handle, key=np.asarray(json.dumps(key, sort_keys=True)), **arrays)
    os.replace(tmp, path)
