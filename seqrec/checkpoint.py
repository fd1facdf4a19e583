"""Save and load SRMs as self-describing folders, without pickle.

A checkpoint folder holds:
    model.safetensors   the weights (shared/tied tensors stored once)
    config.json         {"model": <registry name>, "config": {...}, "format_version": 1}
    manifest.json       the SHA-256 of both, and what wrote them (shared/manifest.py)

so `load_srm(folder)` rebuilds the model from the folder alone, after checking that the
files are the ones saved, and loads the weights strictly (every tensor, of its shape).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from seqrec.models import SequentialRecommender, get_model_class
from shared.manifest import check_model_folder, write_model_manifest

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 1
MANIFEST_KIND = "srm"


def save_srm(model: SequentialRecommender, directory: str | Path) -> Path:
    """Write `model`'s weights and config into `directory` (created if needed).

    Args:
        model: a registered SRM.
        directory: the checkpoint folder; existing checkpoint files in it are overwritten.
    Returns:
        The folder, as a `Path`.
    Raises:
        ValueError: the model's class is not the one registered under its name.
    """
    if get_model_class(model.name) is not type(model):
        raise ValueError(f"{type(model).__name__} is not registered under its name {model.name!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # save_model (not save_file) drops duplicate names of shared tensors, e.g. tied embeddings.
    save_model(model, str(directory / WEIGHTS_NAME))
    meta = {"model": model.name, "config": model.config.to_dict(), "format_version": FORMAT_VERSION}
    (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    write_model_manifest(directory, MANIFEST_KIND, model=model.name)
    return directory


def load_srm(
    directory: str | Path, map_location: str | torch.device = "cpu"
) -> SequentialRecommender:
    """Rebuild a saved SRM from its folder.

    Args:
        directory: a folder written by `save_srm`.
        map_location: device to load the weights onto.
    Returns:
        The model in eval mode.
    Raises:
        FileNotFoundError: the folder, or one of its two files, does not exist.
        ValueError: the files differ from the manifest, the config is unreadable, names an
            unknown model, has a bad field or value, the weights file is unreadable (truncated)
            or does not fit the config (the message names the file).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {directory}")
    config_path = directory / CONFIG_NAME
    weights_path = directory / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file missing: {path}")
    check_model_folder(directory, MANIFEST_KIND)
    model = _build_from_config(config_path, _read_meta(config_path))
    device = torch.device(map_location)
    model.to(device)
    try:
        load_model(model, str(weights_path), strict=True, device=str(device))
    except SafetensorError as err:
        raise ValueError(f"{weights_path}: unreadable weights (truncated?): {err}") from None
    except RuntimeError as err:
        raise ValueError(f"weights in {weights_path} do not fit {config_path}: {err}") from None
    return model.eval()


def _read_meta(config_path: Path) -> dict[str, Any]:
    """Parse and check the top level of config.json."""
    try:
        meta = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_path} is not valid JSON: {err}") from None
    if not isinstance(meta, dict) or not {"model", "config"} <= meta.keys():
        raise ValueError(f"{config_path} must be an object with 'model' and 'config' keys")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{config_path}: unsupported format_version {version!r} (expected {FORMAT_VERSION})"
        )
    if not isinstance(meta["config"], dict):
        raise ValueError(f"{config_path}: 'config' must be an object, got {meta['config']!r}")
    return meta


def _build_from_config(config_path: Path, meta: dict[str, Any]) -> SequentialRecommender:
    """A freshly initialised model of the class and config that `meta` names."""
    try:
        model_class = get_model_class(meta["model"])
    except ValueError as err:
        raise ValueError(f"{config_path}: {err}") from None
    try:
        config = model_class.config_class(**meta["config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{config_path}: bad config for {meta['model']!r}: {err}") from None
    return model_class(config)
