"""`lsc4rec devices`: a live fleet of simulated devices replaying the online stream over gRPC.

    lsc4rec devices --server 127.0.0.1:50051 --dataset ml-100k --srm runs/demo/srm \\
        --users 100 --workers 4 --policy consistency:rank_diff:8 --out runs/devices

Each device replays one stream user (initial list, then per step: policy -> request ->
rerank + fuse -> metrics -> click) against the server; the summary table gives the request
rate, NDCG@10/HR@10, requests ok/failed, latency p50/p95 and throughput, and `--out` gets
`fleet.json` with every device's per-step records (see `simulations.fleet`).

`--llm DIR` serves that generator in this process instead of `--server`; with it,
`--fault AFTER:DOWN_S` stops the server once it has answered AFTER requests and restarts it
on the same port DOWN_S seconds later (the fault drill: no click may be lost).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cli.common import CLIError, add_dataset_args, load_dataset_from_args, read_token
from cloud.loading import load_generator
from cloud.server import ServerConfig, create_server
from device.bundle import BundleError, load_bundle
from seqrec.checkpoint import CONFIG_NAME, load_srm
from shared.manifest import catalogue_digest
from shared.splits import split_stream
from simulations.fleet import (
    FaultPlan,
    FleetBackendError,
    FleetConfig,
    run_fleet,
    run_fleet_with_restart,
    summary_table,
    write_fleet_json,
)
from simulations.replay import ReplayStream, stream_from_split

BACKENDS = ("process", "thread", "ray")  # = simulations.fleet.BACKENDS; --help stays light
TOKEN_ENV = "LSC4REC_TOKEN"  # the bearer token, when no --token-file is given


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "devices", help="run simulated devices against the gRPC server (live fleet)"
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", metavar="HOST:PORT", help="the running cloud server")
    where.add_argument("--llm", metavar="DIR", help="serve this generator in-process instead")
    add_dataset_args(parser)
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--srm", metavar="DIR", help="SRM checkpoint (train-srm), run with torch")
    model.add_argument(
        "--bundle",
        metavar="DIR",
        help="device bundle (export-device, experiment --export-device): its policy, fusion "
        "and session settings, run with onnxruntime",
    )
    parser.add_argument("--users", type=int, default=0, help="devices (stream users; 0 = all)")
    parser.add_argument("--workers", type=int, default=2, help="concurrent device processes")
    parser.add_argument(
        "--policy",
        default=None,
        metavar="SPEC",
        help="with --srm: never | always (default) | random:P | periodic:M | "
        "consistency[:MEASURE]:THRESHOLD | surprise:MEASURE:THRESHOLD (e.g. surprise:drift_mean:0.3)",
    )
    parser.add_argument(
        "--fusion", default=None, help="with --srm: device fusion (default lsc4rec)"
    )
    parser.add_argument("--seed", type=int, default=0, help="policies' random streams")
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help=f"file holding the bearer token, when the server wants one (or set {TOKEN_ENV})",
    )
    parser.add_argument(
        "--token",
        default=None,
        help="the bearer token itself: visible in the process list, prefer --token-file",
    )
    parser.add_argument("--deadline-ms", type=float, default=200.0, help="deadline per attempt")
    parser.add_argument("--backend", choices=BACKENDS, default="process", help="device runner")
    parser.add_argument("--test-window", type=int, default=10, help="online stream length T")
    parser.add_argument(
        "-n", "--candidates", type=int, default=None, help="candidates per list (default 50)"
    )
    parser.add_argument(
        "--request-history", type=int, default=None, help="L: clicks sent (default 50)"
    )
    parser.add_argument("--step-delay-ms", type=float, default=0.0, help="think time per click")
    parser.add_argument(
        "--fault", default=None, metavar="AFTER:DOWN_S", help="restart the --llm server mid-run"
    )
    parser.add_argument("--out", default="runs/devices", help="folder for fleet.json")
    parser.set_defaults(func=run)


def resolve_token(args: argparse.Namespace) -> str | None:
    """The bearer token from --token-file, else $LSC4REC_TOKEN, else --token (with a warning).

    Raises:
        FileNotFoundError, ValueError: an unreadable or empty token file.
        CLIError: more than one source given.
    """
    env_token = os.environ.get(TOKEN_ENV)
    given = [args.token_file is not None, env_token is not None, args.token is not None]
    if sum(given) > 1:
        raise CLIError(f"give the token once: --token-file, {TOKEN_ENV} or --token")
    if args.token is not None:
        print(
            "lsc4rec devices: warning: --token puts the secret in the process list; "
            f"use --token-file or {TOKEN_ENV}",
            file=sys.stderr,
        )
        return args.token
    if env_token is not None:
        # Stripped like a token file: `export LSC4REC_TOKEN=$(cat file)` keeps no newline,
        # but a here-doc or an env file does, and a token with it fails every call.
        if not env_token.strip():
            raise CLIError(f"{TOKEN_ENV} is set but empty")
        return env_token.strip()
    return read_token(args.token_file)


def parse_fault(text: str | None):
    """`AFTER:DOWN_S` as a `FaultPlan`, or None.

    Raises:
        CLIError: not two numbers.
    """
    if text is None:
        return None

    try:
        after, down = text.split(":")
        return FaultPlan(after_requests=int(after), down_s=float(down))
    except ValueError as err:
        raise CLIError(f"--fault {text!r}: expected AFTER_REQUESTS:DOWN_SECONDS ({err})") from None


def _fleet_config(args: argparse.Namespace, target: str):

    return FleetConfig(
        target=target,
        srm_dir=args.srm or "",
        bundle_dir=args.bundle or "",
        policy=args.policy or "always",
        fusion=args.fusion or "lsc4rec",
        seed=args.seed,
        workers=args.workers,
        backend=args.backend,
        n=args.candidates or 50,
        request_history=args.request_history or 50,
        deadline_ms=args.deadline_ms,
        total_timeout_ms=max(1000.0, 4 * args.deadline_ms),
        step_delay_ms=args.step_delay_ms,
        token=args.resolved_token,
    )


def _stream(args: argparse.Namespace):

    if args.users < 0:
        raise CLIError(f"--users must be >= 0, got {args.users}")
    dataset = load_dataset_from_args(args)
    stream = stream_from_split(split_stream(dataset, test_window=args.test_window))
    if args.users and args.users < stream.num_users:
        keep = slice(0, args.users)
        stream = ReplayStream(
            "test",
            stream.users[keep],
            stream.sequences[keep],
            stream.starts[keep],
            stream.window,
        )
    return dataset, stream


def _check_folders(args: argparse.Namespace) -> None:

    folders = (
        ("--srm", args.srm, CONFIG_NAME),
        ("--llm", args.llm, None),
        ("--bundle", args.bundle, None),
    )
    for option, folder, marker in folders:
        if folder is None:
            continue
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{option} {folder}: no such model folder")
        if marker and not (Path(folder) / marker).is_file():
            raise FileNotFoundError(f"{option} {folder}: not a model folder ({marker} missing)")


def _check_catalogue(args: argparse.Namespace, dataset) -> None:
    """The SRM must know the data set's items, or every step would score unknown ids."""
    if args.bundle:
        return  # load_bundle checked it, digest included

    found = load_srm(args.srm).config.num_items
    if found != dataset.num_items:
        raise CLIError(f"--srm model has {found} items, the data set {dataset.num_items}")


def _apply_bundle(args: argparse.Namespace, dataset) -> None:
    """With --bundle: verify it against the data set's catalogue, take its settings, say what
    it runs (the options the bundle fixes may not be given)."""

    fixed = [f"--{name.replace('_', '-')}" for name in ("policy", "fusion", "candidates",
             "request_history") if getattr(args, name) is not None]  # fmt: skip
    if fixed:
        raise CLIError(f"{', '.join(fixed)}: the bundle fixes these; drop them or use --srm")
    try:
        bundle = load_bundle(args.bundle, dataset.num_items, catalogue_digest(dataset.item_ids[1:]))
    except BundleError as err:
        raise CLIError(str(err)) from None
    args.candidates = bundle.settings.candidates
    args.request_history = bundle.settings.request_history
    print(f"bundle {args.bundle}: policy {bundle.policy.label}, fusion {bundle.fusion.name} "
          + " ".join(f"{k}={v:g}" for k, v in fusion_numbers(bundle.fusion).items()))  # fmt: skip


def fusion_numbers(fusion) -> dict[str, float]:
    from dataclasses import asdict

    return {k: v for k, v in asdict(fusion).items() if isinstance(v, int | float)}


def run(args: argparse.Namespace) -> int:

    args.resolved_token = resolve_token(args)
    plan = parse_fault(args.fault)
    if plan is not None and args.llm is None:
        raise CLIError("--fault needs --llm: only a server this process runs can be restarted")
    target = args.server or "127.0.0.1:0"
    if not args.bundle:
        _fleet_config(args, target)  # a bad option fails before any data is read
    _check_folders(args)
    dataset, stream = _stream(args)
    if args.bundle:
        _apply_bundle(args, dataset)
    config = _fleet_config(args, target)
    _check_catalogue(args, dataset)
    try:
        if args.llm is None:
            result = run_fleet(stream, config)
        else:
            result = _run_in_process(args, stream, config, plan)
    except FleetBackendError as err:
        raise CLIError(str(err)) from None
    meta = {"dataset": dataset.name, "users": stream.num_users, "window": stream.window}
    path = write_fleet_json(result, Path(args.out) / "fleet.json", meta)
    summary = result.summary()
    print(summary_table([{"workers": config.workers, **summary}]))
    if summary["failures_by_status"]:
        print(f"failed requests by status: {failure_counts(summary)}; initial fetches failed: "
              f"{summary['initial_failed']} of {summary['initial_requests']}")  # fmt: skip
    if result.events:
        print(f"fault: {result.events}")
    print(f"wrote {path}")
    if summary["initial_requests"] and not summary["any_request_ok"]:
        # The devices kept recommending (their SRM over the catalogue), but the run measured
        # no collaboration at all: a wrong address or token must not pass for a result.
        raise CLIError(f"no request reached the cloud ({failure_counts(summary)}); check "
                       "--server and the token")  # fmt: skip
    return 0


def failure_counts(summary: dict) -> str:
    """`UNAVAILABLE 400, DEADLINE_EXCEEDED 2` from a fleet summary."""
    return ", ".join(f"{code} {count}" for code, count in summary["failures_by_status"].items())


def _run_in_process(args: argparse.Namespace, stream, config, plan):
    """Serve `--llm` on a loopback port for the fleet; with a plan, restart it mid-run."""
    from dataclasses import replace

    generator = load_generator(args.llm)
    # --token turns auth on for the in-process server too, so the drill covers it
    server_config = ServerConfig(grace_s=1.0, auth_token=args.resolved_token)
    if plan is not None:
        return run_fleet_with_restart(generator, stream, config, plan, server_config)
    server, port = create_server(generator, "127.0.0.1:0", server_config)
    try:
        return run_fleet(stream, replace(config, target=f"127.0.0.1:{port}"))
    finally:
        server.shutdown(grace_s=0)
