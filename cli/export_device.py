"""`lsc4rec export-device`: build a device bundle by hand (`lsc4rec inspect-device` says what one
holds).

    lsc4rec export-device --srm runs/demo/srm --policy consistency:rank_diff:8 \\
        --fusion lsc4rec --alpha 0.9 --dataset ml-100k --out runs/device
    lsc4rec inspect-device runs/device

The bundle (`device.bundle`) holds the SRM's ONNX step and scoring graphs, the policy, the
fusion and the session settings, with a manifest of hashes; `lsc4rec devices --bundle DIR`
runs it. `lsc4rec experiment request-rate … --export-device DIR` writes the bundle of the
policy the experiment chose instead.
"""

from __future__ import annotations

import argparse

from cli.common import CLIError, add_dataset_args, load_dataset_from_args
from cli.inspect_device import run_inspect
from device.bundle import BundleError, BundleSettings
from device.fusion import build_fusion
from device.policies.spec import parse_policy
from seqrec.checkpoint import load_srm
from simulations.bundle_export import export_device_bundle


def add_parser(subparsers) -> None:
    export = subparsers.add_parser(
        "export-device", help="write a device bundle: SRM graphs, policy, fusion, settings"
    )
    export.add_argument("--srm", required=True, metavar="DIR", help="TTT4Rec or GRU4Rec checkpoint")
    export.add_argument("--out", required=True, metavar="DIR", help="the bundle folder")
    export.add_argument(
        "--policy",
        default="always",
        metavar="SPEC",
        help="never | always | random:P | periodic:M | consistency[:MEASURE]:THRESHOLD | "
        "surprise:MEASURE:THRESHOLD",
    )
    export.add_argument("--fusion", default="lsc4rec", help="device fusion (default lsc4rec)")
    export.add_argument("--alpha", type=float, default=None, help="the lsc4rec fusion's α")
    export.add_argument("--seed", type=int, default=0, help="the policy's random stream")
    export.add_argument("--top-k", type=int, default=10, help="K: items shown per step")
    export.add_argument("--request-history", type=int, default=50, help="L: clicks sent")
    export.add_argument("-n", "--candidates", type=int, default=50, help="N: candidates asked")
    add_dataset_args(export, required=False)  # optional: records the catalogue's digest
    export.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:

    fields = {} if args.alpha is None else {"alpha": args.alpha}
    fusion = build_fusion(args.fusion, **fields)
    policy = parse_policy(args.policy, args.seed)
    settings = BundleSettings(args.top_k, args.request_history, args.candidates)
    model = load_srm(args.srm)
    item_ids = None
    if args.dataset:
        dataset = load_dataset_from_args(args)
        if dataset.num_items != model.config.num_items:
            raise CLIError(
                f"--srm model has {model.config.num_items} items, the data set {dataset.num_items}"
            )
        item_ids = dataset.item_ids
    try:
        folder = export_device_bundle(args.out, model, policy, fusion, settings, item_ids)
    except BundleError as err:
        raise CLIError(str(err)) from None
    print(f"wrote device bundle {folder}")
    return run_inspect(argparse.Namespace(bundle=str(folder)))
