"""What every cloud candidate generator shares: request validation, the weight-hash model
version, titles, and the `generator.json` beside the weights.

Two generators implement it, one per file (`cloud.loading.load_generator` opens either):
`cloud.item_lm.ItemSequenceGenerator`, the default, a decoder-only model over item tokens; and `cloud.generator.CandidateGenerator`, the
T5/P5 prompt generator (also LoRA on a local pretrained checkpoint).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shared.cache import weights_digest
from shared.candidates import CandidateList
from shared.manifest import check_model_folder, write_model_manifest

GENERATOR_FILE = "generator.json"
TITLES_FILE = "item_titles.json"
FORMAT_VERSION = 1
MANIFEST_KIND = "generator"


class GeneratorBase:
    """Validation and bookkeeping of a generator; subclasses implement `generate`.

    Attributes:
        dataset_name: data set it was trained on ("" if unknown).
        item_titles: index i = title of item i, or None.
    """

    dataset_name: str = ""
    item_titles: list[str] | None = None
    _model_version: str = ""
    nested_top_n = False  # True when every top-n is a prefix of a longer top-n (exact search)
    accelerated = False  # True when `to(device)` can move the kind's model to a GPU

    @property
    def num_items(self) -> int:
        raise NotImplementedError

    @property
    def model_version(self) -> str:
        """`<family>-<ids>-<hash of the weights>`: changes whenever the weights do."""
        return self._model_version

    def to(self, device: str) -> GeneratorBase:
        """Run the model on `device` ("cpu", "cuda", "cuda:N"); requests and lists stay numpy.

        Raises:
            ValueError: a device other than the CPU for a kind that runs on the CPU only.
        """
        if str(device) != "cpu":
            raise ValueError(f"the {type(self).__name__} runs on the CPU only, not {device}")
        return self

    def generate(
        self,
        histories: Sequence[Sequence[int]],
        n: int = 50,
        batch_size: int = 32,
        exclude: Sequence[Sequence[int]] | None = None,
    ) -> list[CandidateList]:
        """Candidate lists for a batch of requests.

        Args:
            histories: per request, the user's item ids, oldest first (the model reads the most
                recent ones; none of the history's items are returned).
            n: candidates per request.
            batch_size: requests computed together (bounds memory).
            exclude: per request, more item ids never to return (the user's older clicks,
                which the model does not read); None = the histories alone.
        Returns:
            per request, a `CandidateList` of n distinct valid items outside the history and
            the exclusion, best first, scored by the model's log-probability of each as the
            next item.
        Raises:
            ValueError: no histories, an empty history, an unknown item id, n < 1, or n larger
                than the catalogue minus the history and the exclusion.
        """
        checked = self.check_request(histories, n)
        masked = self.masked_items(checked, exclude, n)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out: list[CandidateList] = []
        for start in range(0, len(checked), batch_size):
            end = start + batch_size
            out.extend(self._generate_batch(checked[start:end], n, masked[start:end]))
        return out

    def _generate_batch(
        self, histories: list[np.ndarray], n: int, masked: list[np.ndarray]
    ) -> list[CandidateList]:
        """One batch of checked histories -> its lists (the kind's own decoding); `masked`
        holds, per history, the distinct items never to return (history and exclusion)."""
        raise NotImplementedError

    def title(self, item: int) -> str:
        """Title of `item` when the data set has titles, else its identifier."""
        if self.item_titles and self.item_titles[item]:
            return self.item_titles[item]
        return self.identifier(item)

    def identifier(self, item: int) -> str:
        return f"<item_{item}>"

    # ----------------------------------------------------------------- requests

    def check_request(self, histories: Sequence[Sequence[int]], n: int) -> list[np.ndarray]:
        """Validate a request; returns the histories as int64 arrays.

        Raises:
            ValueError: no histories, an empty history, an unknown item id, n < 1, or n larger
                than the catalogue minus the history.
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        if len(histories) == 0:
            raise ValueError("no histories given")
        return [self._check_history(h, int(n), row) for row, h in enumerate(histories)]

    def _check_history(self, history: Sequence[int], n: int, row: int) -> np.ndarray:
        items = self._item_ids(history, f"history {row}")
        allowed = self.num_items - len(np.unique(items))
        if n > allowed:
            raise ValueError(
                f"n={n} is larger than the {allowed} items outside history {row} "
                f"(catalogue {self.num_items})"
            )
        return items

    def masked_items(
        self, histories: list[np.ndarray], exclude: Sequence[Sequence[int]] | None, n: int
    ) -> list[np.ndarray]:
        """Per request, the distinct items never to return: its history and its exclusion.

        Raises:
            ValueError: an exclusion per request that is missing, has an unknown id, or leaves
                fewer than n items.
        """
        if exclude is None:
            return [np.unique(h) for h in histories]
        if len(exclude) != len(histories):
            raise ValueError(f"got {len(exclude)} exclusions for {len(histories)} histories")
        masked = []
        for row, (history, extra) in enumerate(zip(histories, exclude)):
            extra = np.asarray(extra, dtype=np.int64)
            if extra.size:
                extra = self._item_ids(extra, f"exclusion {row}")
            items = np.union1d(history, extra)
            if n > self.num_items - items.size:
                raise ValueError(
                    f"n={n} is larger than the {self.num_items - items.size} items outside "
                    f"history and exclusion {row} (catalogue {self.num_items})"
                )
            masked.append(items)
        return masked

    def _item_ids(self, values: Sequence[int], what: str) -> np.ndarray:
        """`values` as int64 item ids; raises ValueError if empty, non-integer or unknown."""
        items = np.asarray(values)
        if items.size == 0:
            raise ValueError(f"{what} is empty")
        if items.ndim != 1 or items.dtype.kind not in "iu":
            raise ValueError(f"{what} must be a flat list of integer item ids")
        items = items.astype(np.int64)
        bad = items[(items < 1) | (items > self.num_items)]
        if bad.size:
            raise ValueError(f"{what}: unknown item id {int(bad[0])} (ids are 1..{self.num_items})")
        return items

    # ----------------------------------------------------------------- persistence helpers

    def _write_meta(self, folder: Path, kind: str, config: dict[str, Any]) -> None:
        """`generator.json` (what to rebuild) and the titles, beside the weights."""
        if self.item_titles is not None:
            (folder / TITLES_FILE).write_text(json.dumps(self.item_titles))
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "model_version": self.model_version,
            "dataset": self.dataset_name,
            "num_items": self.num_items,
            "config": config,
        }
        (folder / GENERATOR_FILE).write_text(json.dumps(meta, indent=2))
        # Last: the manifest hashes every file written above.
        write_model_manifest(folder, MANIFEST_KIND, model_version=self.model_version)


def weights_version(state: dict, prefix: str) -> str:
    """`<prefix>-<first 12 hex digits of a SHA-256 over the named weights>`."""
    return f"{prefix}-{weights_digest(state)[:12]}"


def read_json(path: Path) -> Any:
    """A JSON file of a saved folder; ValueError naming the file when it is not JSON."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def read_meta(folder: str | Path, verify: bool = True) -> tuple[dict[str, Any], list[str] | None]:
    """`generator.json` and the titles of a saved generator folder.

    Args:
        verify: check the folder against its manifest first (`shared.manifest`); a caller
            that has just done so passes False.
    Raises:
        FileNotFoundError: the folder is not a generator folder.
        ValueError: files that differ from the manifest, a file that is not JSON, or a
            folder written by a newer, unknown format (one line naming the file).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    meta_path = folder / GENERATOR_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder}: not a generator folder ({GENERATOR_FILE} missing)")
    if verify:
        check_model_folder(folder, MANIFEST_KIND)
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ValueError(f"{meta_path}: not a generator description (no 'config' object)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{meta_path}: unsupported format_version {meta.get('format_version')}")
    titles_path = folder / TITLES_FILE
    titles = read_json(titles_path) if titles_path.is_file() else None
    return meta, titles
