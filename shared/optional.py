"""Optional extras: imported only where a user asks for them, with one clear error otherwise."""

from __future__ import annotations

from typing import Any

RAY_HINT = "pip install 'lsc4rec[ray]'"


class BackendUnavailable(RuntimeError):
    """A backend cannot run here (e.g. Ray is not installed)."""


def import_ray(option: str = "--backend ray") -> Any:
    """The `ray` module, for the fleet's and the replay tables' Ray backends.

    Raises:
        BackendUnavailable: Ray is not installed (the message says what to install).
    """
    try:
        import ray
    except ImportError:
        raise BackendUnavailable(
            f"{option} needs Ray, which is not installed: {RAY_HINT}"
        ) from None
    return ray
