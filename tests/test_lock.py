"""pyproject.toml and the lock file agree: the declared ranges are the versions the tests run.

`make test` installs requirements/lock.txt (and torch from requirements/torch.txt), so the
lower bound of every declared dependency must be its locked version: then the oldest version
a user may install is the one `make test` ran, and `make test-latest` runs the newest.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def pins(path: Path) -> dict[str, str]:
    """`name -> version` of every `name==version` line of a requirements file."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            found[canonicalize_name(name)] = version.strip()
    return found


def declared() -> list[Requirement]:
    """The device runtime, the full install and the dev tools of pyproject.toml (what `make
    test` installs)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in project["dependencies"] + extras["full"] + extras["dev"]]


def locked() -> dict[str, str]:
    return pins(ROOT / "requirements" / "lock.txt") | pins(ROOT / "requirements" / "torch.txt")


def lower_bound(requirement: Requirement) -> str | None:
    bounds = [s.version for s in requirement.specifier if s.operator == ">="]
    return bounds[0] if len(bounds) == 1 else None


def test_every_declared_dependency_is_locked_inside_its_range():
    versions = locked()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in versions, f"{name} is declared but not in requirements/lock.txt"
        assert requirement.specifier.contains(versions[name]), (
            f"{name}=={versions[name]} (locked) is outside {requirement}"
        )


def test_every_lower_bound_is_the_locked_version():
    versions = locked()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        bound = lower_bound(requirement)
        assert bound is not None, f"{requirement}: declare one `>=` lower bound"
        assert Version(versions[name]) == Version(bound), (
            f"{requirement}: the lower bound should be the locked {versions[name]}"
        )


def test_the_lock_leaves_torch_to_its_own_pin():
    # A torch line in the lock would let pip pick a CUDA build; it is installed first instead.
    assert "torch" not in pins(ROOT / "requirements" / "lock.txt")
    assert pins(ROOT / "requirements" / "torch.txt") == {"torch": "2.13.0"}
