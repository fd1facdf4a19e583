"""Build a device bundle from a trained SRM: export its graphs (torch side), then write the
bundle with the policy and fusion a device should run (`device.bundle`)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from device.bundle import BundleSettings, check_bundle_target, write_bundle
from device.fusion import Fusion
from device.policies import RequestPolicy
from device.policies.spec import surprise_columns
from seqrec.onnx_export import export_scorer, export_step
from shared.device_format import CATALOGUE_COLUMNS
from shared.manifest import catalogue_digest
from simulations.replay.keys import srm_fingerprint


def export_device_bundle(
    folder: str | Path,
    model: Any,
    policy: RequestPolicy,
    fusion: Fusion,
    settings: BundleSettings,
    item_ids: list[str] | None = None,
    generator_version: str = "",
    notes: dict[str, Any] | None = None,
) -> Path:
    """Write `folder`: the SRM's step and scorer graphs, the policy, the fusion, the settings.

    Args:
        model: a torch SRM that carries a state (TTT4Rec, GRU4Rec); others have no step graph.
        item_ids: the data set's raw item ids (index i = item i) for the catalogue check.
        generator_version: the cloud generator the policy was calibrated against.
    Raises:
        BundleError: `folder` holds something that is not a bundle.
        ValueError: a model without a step graph, or a policy that cannot be stored.
    """
    if not getattr(model, "stateful", False):
        raise ValueError(
            f"a device bundle runs a step graph; a {model.name} model carries no state "
            "(ttt4rec and gru4rec do)"
        )
    check_bundle_target(folder)  # before the slow export
    models = {"srm": srm_fingerprint(model)}
    if generator_version:
        models["generator"] = generator_version
    with tempfile.TemporaryDirectory(prefix="lsc4rec-bundle-") as scratch:
        # the catalogue-wide surprise columns only when the policy reads one of them
        catalogue = bool(surprise_columns(policy) & set(CATALOGUE_COLUMNS))
        step = export_step(model, Path(scratch) / "step.onnx", catalogue=catalogue)
        scorer = export_scorer(model, Path(scratch) / "scorer.onnx")
        return write_bundle(
            folder,
            step,
            scorer,
            fusion=fusion,
            policy=policy,
            settings=settings,
            num_items=model.config.num_items,
            catalogue=catalogue_digest(item_ids[1:]) if item_ids else "",
            models=models,
            notes=notes,
        )
