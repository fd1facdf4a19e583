"""Readers for interaction files: RecBole atomic files, MovieLens-1M, Amazon 5-core, plain CSV.

Every reader returns an `InteractionLog` and raises `DatasetError` with one line naming the
file and the problem (missing column, non-numeric timestamp, empty file).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from shared.datasets.base import DatasetError, InteractionLog


def _parse_timestamp(value: str, source: str, line_no: int) -> int:
    try:
        return int(float(value))
    except ValueError:
        raise DatasetError(f"{source}:{line_no}: timestamp {value!r} is not a number") from None


def _to_log(
    rows: Iterable[tuple[str, str, str, int]], source: str, titles: dict | None = None
) -> InteractionLog:
    """Rows of (user, item, timestamp-as-text, line number) to an InteractionLog."""
    users, items, stamps = [], [], []
    for user, item, stamp, line_no in rows:
        users.append(user)
        items.append(item)
        stamps.append(_parse_timestamp(stamp, source, line_no))
    if not users:
        raise DatasetError(f"{source}: the file holds no interactions")
    return InteractionLog(
        users=np.asarray(users),
        items=np.asarray(items),
        timestamps=np.asarray(stamps, dtype=np.int64),
        item_titles=titles or {},
    )


def _require_columns(header: list[str], needed: tuple[str, ...], source: str) -> list[int]:
    missing = [c for c in needed if c not in header]
    if missing:
        raise DatasetError(
            f"{source}: missing column(s) {', '.join(missing)} (found: {', '.join(header) or 'none'})"
        )
    return [header.index(c) for c in needed]


def read_atomic_inter(text: str, source: str) -> InteractionLog:
    """A RecBole `.inter` file: tab-separated, header `user_id:token item_id:token … timestamp:float`."""
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise DatasetError(f"{source}: the file is empty")
    header = [h.split(":")[0] for h in lines[0].split("\t")]
    cols = _require_columns(header, ("user_id", "item_id", "timestamp"), source)

    def rows():
        for line_no, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < len(header):
                raise DatasetError(
                    f"{source}:{line_no}: expected {len(header)} fields, got {len(parts)}"
                )
            yield parts[cols[0]], parts[cols[1]], parts[cols[2]], line_no

    return _to_log(rows(), source)


def read_atomic_titles(text: str, source: str, title_column: str = "movie_title") -> dict:
    """Item titles from a RecBole `.item` file (raw item id -> title)."""
    lines = text.splitlines()
    if not lines:
        return {}
    header = [h.split(":")[0] for h in lines[0].split("\t")]
    item_col, title_col = _require_columns(header, ("item_id", title_column), source)
    titles = {}
    for line in lines[1:]:
        parts = line.split("\t")
        if len(parts) > max(item_col, title_col):
            titles[parts[item_col]] = parts[title_col]
    return titles


def read_atomic_attributes(text: str, source: str) -> dict:
    """Item attribute tokens from a RecBole `.item` file (raw item id -> tuple of tokens).

    Every column except the id and the title (`release_year:token`, `class:token_seq`, …)
    gives `column=value` tokens, a year also its decade; the title gives `word=…` tokens
    (lower-cased letters and digits, the year in brackets and one-letter words dropped).
    """
    lines = text.splitlines()
    if not lines:
        return {}
    header = [h.split(":") for h in lines[0].split("\t")]
    names = [h[0] for h in header]
    (item_col,) = _require_columns(names, ("item_id",), source)
    attributes = {}
    for line in lines[1:]:
        parts = line.split("\t")
        if len(parts) != len(names):
            continue
        tokens = []
        for (name, *kind), value in zip(header, parts):
            if name != "item_id":
                tokens += _attribute_tokens(name, kind[0] if kind else "token", value)
        attributes[parts[item_col]] = tuple(dict.fromkeys(tokens))
    return attributes


def _attribute_tokens(name: str, kind: str, value: str) -> list[str]:
    if name.endswith("title"):
        words = re.findall(r"[a-z0-9]+", re.sub(r"\(\d{4}\)", " ", value.lower()))
        return [f"word={w}" for w in words if len(w) > 1]
    if name == "release_year":
        if not value.strip().isdigit():
            return []
        year = int(value)
        return [f"year={year}", f"decade={year // 10 * 10}s"]
    name = "genre" if name == "class" else name
    values = value.split() if kind == "token_seq" else [value.strip()]
    return [f"{name}={v}" for v in values if v]


def _open_text(path: Path) -> io.TextIOBase:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - returned to caller


def read_movielens_1m(
    ratings_path: str | Path, movies_path: str | Path | None = None
) -> InteractionLog:
    """MovieLens-1M `ratings.dat` (`user::item::rating::timestamp`), titles from `movies.dat`."""
    ratings_path = Path(ratings_path)
    source = str(ratings_path)

    def rows():
        with _open_text(ratings_path) as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                parts = line.rstrip("\n").split("::")
                if len(parts) < 4:
                    raise DatasetError(
                        f"{source}:{line_no}: expected user::item::rating::timestamp, got {line.strip()!r}"
                    )
                yield parts[0], parts[1], parts[3], line_no

    titles = {}
    if movies_path is None and (ratings_path.parent / "movies.dat").exists():
        movies_path = ratings_path.parent / "movies.dat"
    if movies_path is not None:
        with open(movies_path, encoding="latin-1") as handle:
            for line in handle:
                parts = line.rstrip("\n").split("::")
                if len(parts) >= 2:
                    titles[parts[0]] = parts[1]
    return _to_log(rows(), source, titles)


def read_amazon_reviews(path: str | Path) -> InteractionLog:
    """Amazon review 5-core JSON lines (`reviewerID`, `asin`, `unixReviewTime`), gzipped or not."""
    path = Path(path)
    source = str(path)

    def rows():
        with _open_text(path) as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DatasetError(
                        f"{source}:{line_no}: not a JSON object ({err.msg})"
                    ) from None
                missing = [k for k in ("reviewerID", "asin", "unixReviewTime") if k not in record]
                if missing:
                    raise DatasetError(f"{source}:{line_no}: missing field(s) {', '.join(missing)}")
                yield record["reviewerID"], record["asin"], str(record["unixReviewTime"]), line_no

    return _to_log(rows(), source)


def read_csv_interactions(path: str | Path) -> InteractionLog:
    """A plain CSV with a header `user,item,timestamp[,rating]` (extra columns ignored)."""
    path = Path(path)
    source = str(path)
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise DatasetError(f"{source}: the file is empty")
        header = [h.strip().lower() for h in header]
        cols = _require_columns(header, ("user", "item", "timestamp"), source)
        rows = [
            (r[cols[0]], r[cols[1]], r[cols[2]], line_no)
            for line_no, r in enumerate(reader, start=2)
            if r and _check_width(r, len(header), source, line_no)
        ]
    return _to_log(rows, source)


def _check_width(row: list[str], width: int, source: str, line_no: int) -> bool:
    if len(row) < width:
        raise DatasetError(f"{source}:{line_no}: expected {width} fields, got {len(row)}")
    return True
