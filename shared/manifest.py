"""Folder manifests: what wrote a folder, in which format, and the SHA-256 of every file in it.

    write_manifest(folder, kind="device-bundle", version=1, extra={...})
    manifest = verify_manifest(folder, kind="device-bundle", versions=(1,))
    manifest = check_model_folder(folder, kind="srm")   # None (with a warning) before manifests

`verify_manifest` refuses a folder whose manifest is missing or not JSON, of another kind or
format version, or whose files differ from the listed ones (missing, extra, or changed): each
as a `ManifestError` whose message is one line naming the folder and the file.

Model folders (a generator, an SRM) get a manifest too. A model folder written before
manifests existed still loads, with one warning, and then rests on the loader's own strict
checks alone (every tensor present and of its shape).
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
MODEL_FOLDER_VERSION = 1  # format of a model folder's manifest
# Files a trainer writes beside a model after saving it; no loader reads them.
UNREAD_FILES = frozenset({"training_log.json"})
_CHUNK = 1 << 20

logger = logging.getLogger("lsc4rec.manifest")


class ManifestError(ValueError):
    """A folder does not match its manifest (or has none): the message says what and where."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _listed_files(folder: Path) -> list[str]:
    """Every file under `folder` but the manifest, as sorted POSIX paths relative to it."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name != MANIFEST_NAME
    )


def write_manifest(
    folder: str | Path,
    kind: str,
    version: int,
    extra: dict[str, Any] | None = None,
    unread: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Hash every file of `folder` (but those named in `unread`) and write its
    `manifest.json`; returns the manifest."""
    from importlib import metadata

    folder = Path(folder)
    try:
        writer = f"lsc4rec {metadata.version('lsc4rec')}"
    except metadata.PackageNotFoundError:  # run from a source tree
        writer = "lsc4rec (source tree)"
    manifest = {
        "kind": kind,
        "format_version": version,
        "written_by": writer,
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        **(extra or {}),
        "files": {
            name: file_sha256(folder / name) for name in _listed_files(folder) if name not in unread
        },
    }
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest as written, unchecked.

    Raises:
        ManifestError: no manifest, or not a JSON object.
    """
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{folder}: no {MANIFEST_NAME} (not a folder this project wrote)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ManifestError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ManifestError(f"{path}: not a manifest (no 'files' table)")
    return manifest


def verify_manifest(
    folder: str | Path,
    kind: str,
    versions: Iterable[int],
    unread: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The manifest of `folder`, after checking its kind, format version and every file.

    `unread` names files that may be present without being listed (nothing loads them).

    Raises:
        ManifestError: the first thing that does not match, in one line.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ManifestError(f"{folder}: no such folder")
    manifest = read_manifest(folder)
    if manifest.get("kind") != kind:
        raise ManifestError(f"{folder}: a {manifest.get('kind')!r} folder, not a {kind!r} one")
    versions = tuple(versions)
    if manifest.get("format_version") not in versions:
        raise ManifestError(
            f"{folder}: format version {manifest.get('format_version')!r}; this version of "
            f"lsc4rec reads {', '.join(map(str, versions))}"
        )
    listed, found = manifest["files"], set(_listed_files(folder))
    for name in sorted(listed):
        if name not in found:
            raise ManifestError(f"{folder}: {name} is missing")
    for name in sorted(found - set(listed) - unread):
        raise ManifestError(f"{folder}: {name} is not in the manifest")
    for name, expected in sorted(listed.items()):
        if file_sha256(folder / name) != expected:
            raise ManifestError(f"{folder}: {name} does not match its SHA-256 in the manifest")
    return manifest


def write_model_manifest(folder: str | Path, kind: str, **extra: Any) -> dict[str, Any]:
    """The manifest of a model folder (`kind` "generator" or "srm"), written last by `save`."""
    return write_manifest(folder, kind, MODEL_FOLDER_VERSION, extra, unread=UNREAD_FILES)


def check_model_folder(folder: str | Path, kind: str) -> dict[str, Any] | None:
    """Verify a model folder against its manifest before anything in it is read.

    Returns:
        the manifest, or None for a folder written before manifests (logged once as a
        warning: it loads, checked only by the loader's strict tensor checks).
    Raises:
        ManifestError: a manifest that does not match the folder (one line, naming the file).
    """
    if not (Path(folder) / MANIFEST_NAME).exists():
        logger.warning(
            "%s: no %s (written before manifests); loading it without the integrity check",
            folder,
            MANIFEST_NAME,
        )
        return None
    return verify_manifest(folder, kind, (MODEL_FOLDER_VERSION,), unread=UNREAD_FILES)


def catalogue_digest(item_ids: Iterable[Any]) -> str:
    """A short fingerprint of a catalogue: its raw item ids in index order (item 1 first).

    Two catalogues with the same size but other items (or another order) differ, so a model
    folder made for one is refused with the other."""
    h = hashlib.sha256()
    for item in item_ids:
        h.update(str(item).encode() + b"\0")
    return h.hexdigest()[:16]
