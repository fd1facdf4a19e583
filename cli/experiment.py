"""`lsc4rec experiment request-rate`: request rate vs accuracy on the replayed online stream.

    lsc4rec experiment request-rate --dataset ml-100k --llm runs/demo/llm \\
        --srm runs/demo/srm --out runs/request_rate

Makes (or reads from `--cache-dir`) the generator's fresh list for every stream step and the
SRM's scores of them, calibrates every policy on the validation stream, replays every point
on the test stream, and writes `request_rate.{csv,json,md,png}` and `records.npz` into
`--out` (see `simulations.request_rate`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cli.common import CLIError, add_dataset_args, load_dataset_from_args
from cloud.loading import load_generator, place_generator
from device.bundle import BundleSettings
from device.policies.surprise import SURPRISE_MEASURES
from seqrec.checkpoint import CONFIG_NAME, load_srm
from shared.optional import BackendUnavailable, import_ray
from shared.splits import split_stream
from simulations.bundle_export import export_device_bundle
from simulations.replay import ReplayConfig, dataset_label
from simulations.request_rate import (
    RequestRateConfig,
    gaps_markdown,
    goal_markdown,
    markdown_table,
    prepare_streams,
    write_outputs,
)
from simulations.request_rate import run_request_rate as run_sweep
from simulations.request_rate.config import ALPHA_FUSIONS, DEFAULT_ALPHAS
from simulations.request_rate.report import rate_control_markdown


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "experiment", help="run an experiment (request rate vs accuracy)"
    )
    actions = parser.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    sweep = actions.add_parser(
        "request-rate", help="sweep request policies over their rates on the replayed stream"
    )
    add_dataset_args(sweep)
    sweep.add_argument("--llm", required=True, metavar="DIR", help="generator folder (train-llm)")
    sweep.add_argument("--srm", required=True, metavar="DIR", help="SRM checkpoint (train-srm)")
    sweep.add_argument("--out", default="runs/request_rate", help="folder for tables and plot")
    sweep.add_argument(
        "--calibration-llm",
        metavar="DIR",
        help="generator trained one test window earlier (train-llm --test-window 2T): "
        "replays the validation stream, so calibration sees clicks new to the models",
    )
    sweep.add_argument(
        "--calibration-srm",
        metavar="DIR",
        help="SRM trained one test window earlier (train-srm --test-window 2T); with "
        "--calibration-llm",
    )
    _add_sweep_args(sweep)
    _add_replay_args(sweep)
    device = sweep.add_argument_group("device bundle")
    device.add_argument(
        "--export-device",
        metavar="DIR",
        help="write the device bundle of the policy the experiment chose at --device-rate "
        "(its thresholds or learned weights, the fusion, the SRM's graphs)",
    )
    device.add_argument(
        "--device-rate",
        type=float,
        default=0.1,
        help="the target rate whose chosen policy the bundle carries (one of --rates)",
    )
    sweep.set_defaults(func=run)


def _csv(kind: type):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(part.strip()) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list, got {text!r}"
            ) from None

    return parse


# = simulations.request_rate.FAMILIES, spelled out so `--help` need not import torch
FAMILIES = ("random", "periodic", "consistency", "learned")
# LSC4Rec's consistency measures and the device's surprise at the clicks since the fetch
MEASURES = (
    "rank_diff",
    "kendall",
    "topk",
    "rbo",
    "drift_mean",
    "inner_loss_mean",
    "last_click_position",
)


def _alpha(text: str) -> str | float:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"alpha must be in [0, 1], got {value}")
    return value


def _add_sweep_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sweep")
    group.add_argument(
        "--fusion",
        default="auto",
        help="device fusion: auto (default: the best on the validation stream of lsc4rec "
        "with one α, age_lsc4rec with one α per list-age bucket, and learned, a linear "
        "scorer fitted there), or any one of those, blend, rrf, llm_only, srm_only",
    )
    group.add_argument(
        "--alpha",
        type=_alpha,
        default="auto",
        help="the lsc4rec fusions' α: 'auto' (default) chooses it in 0, 0.1, …, 1 on the "
        "validation stream (lsc4rec alone: by always-request NDCG@10; age_lsc4rec: each "
        "list-age bucket's α on the states of that age) and keeps LSC4Rec's α = 0.5 as a "
        "reference row; a number fixes the grid to it",
    )
    group.add_argument(
        "--rates", type=_csv(float), default=(0.05, 0.1, 0.2, 0.3, 0.5, 0.8), help="target rates"
    )
    group.add_argument(
        "--policies",
        type=_csv(str),
        default=FAMILIES,
        help=f"policy curves, comma-separated (default: {','.join(FAMILIES)})",
    )
    group.add_argument(
        "--measures",
        type=_csv(str),
        default=MEASURES,
        help="request measures, each a threshold curve: consistency (rank_diff, kendall, "
        "topk, rbo) or surprise (surprisal, catalogue_rank, list_rank, drift, inner_loss, "
        "last_click_position, each also as NAME_mean since the fetch) "
        f"(default: {','.join(MEASURES)})",
    )
    group.add_argument("--bootstrap", type=int, default=1000, help="bootstrap draws over users")
    group.add_argument(
        "--auc-bootstrap",
        type=int,
        default=200,
        help="bootstrap draws of the measure-AUC table (0 = no table)",
    )
    group.add_argument("--seed", type=int, default=0, help="policies, calibration, bootstrap")


def _add_replay_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("replay")
    group.add_argument("--test-window", type=int, default=10, help="online stream length T")
    group.add_argument(
        "--valid-window", type=int, default=0, help="validation stream length (0 = T)"
    )
    group.add_argument("-n", "--candidates", type=int, default=50, help="candidates per list")
    group.add_argument(
        "--request-history", type=int, default=50, help="L: clicks sent with a request"
    )
    group.add_argument("--batch-size", type=int, default=32, help="requests decoded together")
    group.add_argument(
        "--cache-dir", default="runs/replay_cache", help="cache of fresh lists and SRM scores"
    )
    group.add_argument("--threads", type=int, default=1, help="torch threads")
    group.add_argument(
        "--table-workers",
        type=int,
        default=1,
        help="processes (or Ray tasks) making the fresh lists and SRM tables, a chunk of users each",
    )
    group.add_argument(
        "--table-backend",
        choices=("local", "ray"),
        default="local",
        help="local: processes on this machine; ray: tasks on the cluster ray.init() joins",
    )
    group.add_argument(
        "--device",
        default="auto",
        help="where the generator makes the fresh lists: auto (a GPU when torch sees one and "
        "the generator can use it), cpu or cuda[:N]; the SRM tables run on the CPU",
    )
    group.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _check_folder(path: str, option: str, marker: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{option} {path}: no such model folder")
    if not (folder / marker).is_file():
        raise FileNotFoundError(f"{option} {path}: not a model folder ({marker} missing)")
    return folder


def _check_model_folders(args: argparse.Namespace) -> None:
    """Fail fast, before any data is loaded, on a missing or wrong model folder."""

    _check_folder(args.llm, "--llm", "generator.json")
    _check_folder(args.srm, "--srm", CONFIG_NAME)
    if (args.calibration_llm is None) != (args.calibration_srm is None):
        raise ValueError("--calibration-llm and --calibration-srm go together")
    if args.calibration_llm is not None:
        _check_folder(args.calibration_llm, "--calibration-llm", "generator.json")
        _check_folder(args.calibration_srm, "--calibration-srm", CONFIG_NAME)


def _load_models(args: argparse.Namespace, num_items: int, llm: str, srm: str):

    generator = load_generator(llm)
    model = load_srm(srm)
    for name, found in ((llm, generator.num_items), (srm, model.config.num_items)):
        if found != num_items:
            raise ValueError(f"model {name} has {found} items, the data set {num_items}")
    return generator, model


def _build_configs(args: argparse.Namespace):
    """The sweep and replay configs (ValueError on a bad value, before anything slow runs)."""

    config = RequestRateConfig(
        target_rates=args.rates,
        families=args.policies,
        measures=args.measures,
        fusion=args.fusion,
        alphas=_alphas(args),
        seed=args.seed,
        bootstrap_draws=args.bootstrap,
        auc_draws=args.auc_bootstrap,
        **_learned_features(args),
    )
    if args.table_backend == "ray":
        try:
            import_ray("--table-backend ray")
        except BackendUnavailable as err:
            raise CLIError(str(err)) from None
    replay = ReplayConfig(
        args.candidates,
        args.request_history,
        args.batch_size,
        table_workers=args.table_workers,
        table_backend=args.table_backend,
    )
    return config, replay


def _learned_features(args: argparse.Namespace) -> dict:
    """With calibration models the validation clicks are new to the SRM, so the learned
    policy may read the SRM's own surprisal too (without, it stays off: see
    `device.policies.learned.DEFAULT_SURPRISE_FEATURES`)."""

    return {"learned_surprise": SURPRISE_MEASURES} if args.calibration_llm else {}


def _alphas(args: argparse.Namespace) -> tuple[float, ...]:
    """The α candidates: all of ALPHAS for 'auto', the one given, none for other fusions."""
    if args.fusion not in ALPHA_FUSIONS:
        if args.alpha != "auto":
            raise ValueError(f"--alpha applies to the lsc4rec fusions, not {args.fusion!r}")
        return ()
    return DEFAULT_ALPHAS if args.alpha == "auto" else (args.alpha,)


def run(args: argparse.Namespace) -> int:
    import torch

    config, replay_config = _build_configs(args)
    if args.export_device and args.device_rate not in config.target_rates:
        raise ValueError(
            f"--device-rate {args.device_rate:g} is not one of --rates "
            f"({', '.join(f'{r:g}' for r in config.target_rates)})"
        )
    _check_model_folders(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    dataset = load_dataset_from_args(args)
    generator, model = _load_models(args, dataset.num_items, args.llm, args.srm)
    generator = place_generator(generator, args.device)
    calibration = None
    if args.calibration_llm is not None:
        calibration = _load_models(
            args, dataset.num_items, args.calibration_llm, args.calibration_srm
        )
        calibration = (place_generator(calibration[0], args.device), calibration[1])
    split = split_stream(dataset, test_window=args.test_window)
    label = dataset_label(dataset, args.data_seed if args.dataset == "synthetic" else None)
    valid, test = prepare_streams(
        split,
        generator,
        model,
        replay_config,
        args.cache_dir,
        label,
        valid_window=args.valid_window or None,
        progress=not args.no_progress,
        calibration=calibration,
    )
    prepared = time.perf_counter()
    experiment = run_sweep(
        test, valid, config, progress=not args.no_progress, topics=dataset.latent_topics
    )
    meta = {
        "dataset": label,
        "generator": generator.model_version,
        "srm": model.name,
        "calibration_models": [args.calibration_llm, args.calibration_srm]
        if calibration is not None
        else None,
        "test_users": test.num_users,
        "valid_users": valid.num_users,
        "test_window": test.window,
        "valid_window": valid.window,
        "lists_from_cache": test.lists.from_cache,
        "seconds_prepare": round(prepared - started, 1),
        "seconds_sweep": round(time.perf_counter() - prepared, 1),
    }
    paths = write_outputs(experiment, args.out, config, meta)
    _print_summary(experiment, config, meta, paths)
    if args.export_device:
        _export_device(args, experiment, model, dataset, generator, replay_config)
    return 0


def _export_device(args, experiment, model, dataset, generator, replay_config) -> None:
    """Write the bundle of the policy chosen at `--device-rate`, and say what it holds."""

    point, row = experiment.chosen(args.device_rate)
    settings = BundleSettings(
        top_k=10, request_history=replay_config.request_history, candidates=replay_config.n
    )
    notes = {
        "chosen_by": f"best validation NDCG@10 among the calibrated policies at rate "
        f"{args.device_rate:g}",
        "policy_family": point.family,
        "replay_label": row["label"],
        "target_rate": args.device_rate,
        "validation_rate": round(float(point.valid_rate), 4),
        "replay_test_rate": round(float(row["request_rate"]), 4),
        "replay_test_NDCG@10": round(float(row["NDCG@10"]), 4),
    }
    folder = export_device_bundle(
        args.export_device,
        model,
        point.policy,
        point.fusion,
        settings,
        dataset.item_ids,
        generator.model_version,
        notes,
    )
    print(f"wrote device bundle {folder}: {point.policy.label}, fusion {point.fusion.name}, "
          f"replay test rate {row['request_rate']:.3f} at target {args.device_rate:g}")  # fmt: skip


def _print_summary(experiment, config, meta: dict, paths: dict) -> None:

    print(markdown_table(experiment.rows))
    print("\n" + goal_markdown(experiment.goal, config.goal_ratio))
    print("\n" + gaps_markdown(experiment.notes.get("reference_gaps", {})), end="")
    if experiment.notes.get("rate_control"):
        print("\nper-device rate controller, test stream:")
        print(rate_control_markdown(experiment.notes["rate_control"]))
    print(
        f"\n{len(experiment.rows)} points on {meta['test_users']} users × {meta['test_window']} "
        f"steps (prepare {meta['seconds_prepare']}s, sweep {meta['seconds_sweep']}s); wrote "
        + ", ".join(str(p) for p in paths.values())
    )
