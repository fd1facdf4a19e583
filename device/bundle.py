"""The device bundle: one folder with everything a device runs, and nothing else.

    bundle/
      manifest.json   format version, what wrote it, the catalogue, model versions, SHA-256
                      of every other file (`shared.manifest`)
      device.json     the session settings (K, L, N), the fusion, the request policy
                      (kind and its numbers: threshold, learned weights and feature scaling,
                      rate controller), as plain JSON: no pickle
      step.onnx       the SRM's per-click step (TTT4Rec or GRU4Rec: one contract) with the
                      surprise columns the policy reads and the held list's scores, one run
                      per click; the item table it needs (F_t of every item) is a constant
                      inside it, the initial state and the model's config in its metadata
      scorer.onnx     candidate scoring against the same item table

    bundle = load_bundle("runs/demo/device")      # verifies everything, or one-line error
    session = bundle.session(user_key, history=clicks)
    outcome = session.serve_step(client.fetch)   # the bundle's policy and fusion

Writing: the torch side exports the graphs (`seqrec.onnx_export`) and `write_bundle` adds the
rest (`simulations.bundle_export` puts the two together). Loading needs numpy and onnxruntime
only.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from device.fusion import Fusion, build_fusion
from device.onnx_runtime import OnnxStepModel
from device.policies.base import RequestPolicy
from device.policies.spec import policy_from_dict, policy_to_dict, surprise_columns
from device.session import DeviceSession, SessionConfig, StatefulRunner
from shared.candidates import CandidateList
from shared.device_format import CATALOGUE_COLUMNS
from shared.manifest import ManifestError, verify_manifest, write_manifest

BUNDLE_KIND = "device-bundle"
BUNDLE_VERSION = 1
SETTINGS_FILE = "device.json"
STEP_FILE = "step.onnx"
SCORER_FILE = "scorer.onnx"


class BundleError(ValueError):
    """A bundle that cannot be used: corrupt, another format version, another catalogue."""


@dataclass(frozen=True)
class BundleSettings:
    """A device session's settings, as the bundle stores them."""

    top_k: int = 10  # K: items shown per step
    request_history: int = 50  # L: most recent clicks sent with a request
    candidates: int = 50  # N: candidates asked for per request

    def __post_init__(self) -> None:
        SessionConfig(top_k=self.top_k, request_history=self.request_history)  # validates
        if self.candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {self.candidates}")


def fusion_to_dict(fusion: Fusion) -> dict[str, Any]:
    return {"kind": fusion.name, **asdict(fusion)}


def fusion_from_dict(data: dict[str, Any]) -> Fusion:
    return build_fusion(data["kind"], **{k: v for k, v in data.items() if k != "kind"})


@dataclass
class DeviceBundle:
    """A loaded, verified bundle.

    Attributes:
        folder: where it was read from.
        manifest: its manifest (catalogue, model versions, hashes).
        settings: K, L, N.
        fusion: how the device merges the LLM's ranks and the SRM's scores.
        policy: the request policy, unspawned (`session` gives each user a copy).
        model: the SRM's graphs under onnxruntime.
    """

    folder: Path
    manifest: dict[str, Any]
    settings: BundleSettings
    fusion: Fusion
    policy: RequestPolicy
    model: OnnxStepModel

    @property
    def num_items(self) -> int:
        return int(self.manifest["catalogue"]["num_items"])

    def runner(self) -> StatefulRunner:
        """The SRM behind the session's runner interface (no per-user state: shareable)."""
        return StatefulRunner(self.model)

    def session(
        self,
        key: int,
        history: Iterable[int] = (),
        candidates: CandidateList | None = None,
        top_k: int | None = None,
    ) -> DeviceSession:
        """A device session for user `key` (its policy's random stream), running the bundle."""
        config = SessionConfig(
            top_k=top_k or self.settings.top_k, request_history=self.settings.request_history
        )
        policy = self.policy.spawn(key)
        return DeviceSession(self.runner(), policy, self.fusion, config, history, candidates)

    def describe(self) -> list[str]:
        """Plain lines for a person: what this bundle runs."""
        catalogue = self.manifest["catalogue"]
        lines = [
            f"bundle {self.folder} (format {self.manifest['format_version']}, "
            f"{self.manifest['written_by']}, {self.manifest['written_at']})",
            f"catalogue: {catalogue['num_items']} items"
            + (f", digest {catalogue['digest']}" if catalogue.get("digest") else ""),
            f"policy: {self.policy.label}",
            f"fusion: {self.fusion.name} "
            + " ".join(f"{k}={v}" for k, v in asdict(self.fusion).items()),
            f"session: K={self.settings.top_k} shown, L={self.settings.request_history} clicks "
            f"per request, N={self.settings.candidates} candidates",
        ]
        for name, version in self.manifest.get("models", {}).items():
            lines.append(f"model {name}: {version}")
        for name, value in self.manifest.get("notes", {}).items():
            lines.append(f"{name}: {value}")
        return lines


def check_bundle_target(folder: str | Path) -> Path:
    """`folder` as a place a bundle may be written: absent, empty, or a bundle to replace.

    Raises:
        BundleError: it holds something else (nothing there is ever overwritten).
    """
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        try:
            verify_manifest(folder, BUNDLE_KIND, range(1, BUNDLE_VERSION + 1))
        except ManifestError as err:
            raise BundleError(f"{folder} exists and is not a device bundle: {err}") from None
    return folder


def write_bundle(
    folder: str | Path,
    step_path: str | Path,
    scorer_path: str | Path,
    *,
    fusion: Fusion,
    policy: RequestPolicy,
    settings: BundleSettings,
    num_items: int,
    catalogue: str = "",
    models: dict[str, str] | None = None,
    notes: dict[str, Any] | None = None,
) -> Path:
    """Write a bundle to `folder` (replacing a bundle there) from exported graphs.

    The folder is filled in a temporary sibling and moved in place at the end, so a failure
    half-way never leaves a half-written bundle behind.

    Args:
        step_path, scorer_path: graphs from `seqrec.onnx_export`.
        fusion, policy, settings: what the device runs.
        num_items: the catalogue size the graphs were made for.
        catalogue: `shared.manifest.catalogue_digest` of the catalogue's item ids ("" = unknown).
        models: model name -> version string (the SRM's, the generator's the lists came from).
        notes: plain facts for `describe` (e.g. the rate it was calibrated to).
    Raises:
        BundleError: `folder` exists and is not a bundle (nothing is overwritten then).
        ValueError: a policy that cannot be stored (e.g. an unfitted learned policy).
    """
    folder = check_bundle_target(folder)
    device = {
        "session": asdict(settings),
        "fusion": fusion_to_dict(fusion),
        "policy": policy_to_dict(policy),
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        shutil.copyfile(step_path, scratch / STEP_FILE)
        shutil.copyfile(scorer_path, scratch / SCORER_FILE)
        (scratch / SETTINGS_FILE).write_text(json.dumps(device, indent=2) + "\n")
        extra = {
            "catalogue": {"num_items": int(num_items), "digest": catalogue},
            "models": dict(models or {}),
            "notes": dict(notes or {}),
        }
        write_manifest(scratch, BUNDLE_KIND, BUNDLE_VERSION, extra)
        if folder.exists():
            shutil.rmtree(folder)
        scratch.rename(folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder


def load_bundle(
    folder: str | Path,
    num_items: int | None = None,
    catalogue: str = "",
    num_threads: int = 1,
) -> DeviceBundle:
    """Read and verify a bundle: every file's hash, the format version, and (when given) that
    it was made for this catalogue.

    Args:
        num_items: the catalogue size the device serves (None = do not check).
        catalogue: its `catalogue_digest` ("" = do not check).
        num_threads: onnxruntime intra-op threads.
    Raises:
        BundleError: anything wrong, as one line naming the folder and what.
    """
    folder = Path(folder)
    try:
        manifest = verify_manifest(folder, BUNDLE_KIND, range(1, BUNDLE_VERSION + 1))
    except ManifestError as err:
        raise BundleError(str(err)) from None
    stored = manifest.get("catalogue", {})
    if num_items is not None and stored.get("num_items") != num_items:
        raise BundleError(
            f"{folder}: made for a catalogue of {stored.get('num_items')} items, "
            f"this one has {num_items}"
        )
    if catalogue and stored.get("digest") and stored["digest"] != catalogue:
        raise BundleError(
            f"{folder}: made for another catalogue (digest {stored['digest']}, "
            f"this one {catalogue})"
        )
    try:
        device = json.loads((folder / SETTINGS_FILE).read_text())
        settings = BundleSettings(**device["session"])
        fusion = fusion_from_dict(device["fusion"])
        policy = policy_from_dict(device["policy"])
        model = OnnxStepModel(folder / STEP_FILE, folder / SCORER_FILE, num_threads=num_threads)
    except (KeyError, TypeError, ValueError) as err:
        raise BundleError(f"{folder}: {SETTINGS_FILE} or a graph is not usable ({err})") from None
    except Exception as err:  # noqa: BLE001 (onnxruntime raises its own exception types)
        raise BundleError(f"{folder}: a graph does not load ({type(err).__name__})") from None
    missing = (
        surprise_columns(policy) & set(CATALOGUE_COLUMNS) if not model.catalogue_surprise else ()
    )
    if missing:
        raise BundleError(
            f"{folder}: the policy reads {', '.join(sorted(missing))}, which its step graph "
            "does not compute"
        )
    if model.num_items is not None and model.num_items != stored.get("num_items"):
        raise BundleError(
            f"{folder}: its graphs score {model.num_items} items, its manifest says "
            f"{stored.get('num_items')}"
        )
    return DeviceBundle(folder, manifest, settings, fusion, policy, model)
