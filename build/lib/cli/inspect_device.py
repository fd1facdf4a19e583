"""`lsc4rec inspect-device`: verify a device bundle and say what it runs.

    lsc4rec inspect-device runs/device

Needs only the device runtime (`pip install '.[device]'`): numpy and onnxruntime.
"""

from __future__ import annotations

import argparse

from cli.common import CLIError
from device.bundle import BundleError, load_bundle


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect-device", help="verify a device bundle and say what it runs"
    )
    parser.add_argument("bundle", metavar="DIR", help="the bundle folder")
    parser.set_defaults(func=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    try:
        bundle = load_bundle(args.bundle)
    except BundleError as err:
        raise CLIError(str(err)) from None
    print("\n".join(bundle.describe()))
    return 0
