"""How good are the cloud's candidate lists, and how much does a fresh one beat a stale one?

Candidate table: for every stream user, a list of N candidates (default 50) is made from the
training part (history = `s_1 … s_{n−T−1}`) and scored against the validation target
`s_{n−T}`: Recall@N (the target is in the list), NDCG@10 of the list's own ranking (0 outside
the top 10), and Recall@N on the users whose target is a rare item (at most `--rare-max`
training clicks). Rows: each generator (`--model`, several side by side), the top-N of device
SRM checkpoints (`--srm`, history excluded), the most popular training items, a uniform
random list, and with `--text-knn K` the items whose text is nearest the mean text of the
last K clicks (the sentence encoder of `cloud.item_text`, no training: what the text alone
knows).

Cold items (`--cold-items 0.1`): a seeded 10% of the items lose every interaction from the
training parts (`shared.splits.split_stream`); the generators must have been trained the same
way (`train-llm --cold-items 0.1`, checked in their `training_log.json`). A column adds
Recall@N on the validation targets that are cold items, which no model has seen clicked.

Fresh vs stale (`--fresh-stale`): on the online test stream, at each step offset k = 1..T the
share of targets in the fresh list (made from the history up to the step) and in the list made
at the stream start, and the NDCG@10 of the generator's own order, with 95% bootstrap
intervals over users on the fresh − stale difference (offset 1: the two lists are the same).

    lsc4rec candidate-table --model runs/llm runs/llm_t5 --srm runs/srm_sasrec \
        --fresh-stale --out runs/candidate_table

Writes `candidate_table.json|md` (and `fresh_stale.json|md`) into `--out`, prints the tables.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from shared.candidates import request_parts
from shared.metrics import candidate_list_ranks, hit_rate, ndcg
from shared.options import add_cold_item_args


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lsc4rec candidate-table", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--model", nargs="+", required=True, help="generator folder(s) (lsc4rec train-llm)"
    )
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--synthetic-users", type=int, default=500)
    parser.add_argument("--test-window", type=int, default=10, help="online stream length T")
    parser.add_argument("-n", type=int, default=50, help="candidates per list")
    parser.add_argument(
        "--srm", nargs="*", default=[], metavar="DIR", help="device SRM checkpoint folder(s)"
    )
    parser.add_argument(
        "--rare-max", type=int, default=20, help="a target with at most this many training "
        "clicks is rare"
    )  # fmt: skip
    parser.add_argument(
        "--fresh-stale", action="store_true", help="also the fresh-vs-stale stream table"
    )
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--batch-size", type=int, default=32, help="requests per generate call")
    parser.add_argument(
        "--request-history",
        type=int,
        default=50,
        help="L: clicks a device sends (the older ones go as the exclusion), as served",
    )
    parser.add_argument(
        "--without-exclusion",
        action="store_true",
        help="add each generator's lists as served before the exclusion field (last L only)",
    )
    add_cold_item_args(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random lists")
    parser.add_argument(
        "--text-knn",
        type=int,
        default=0,
        metavar="K",
        help="add the items nearest in text to the mean text of the last K clicks (0 = off)",
    )
    parser.add_argument("--text-model", default=None, metavar="PATH", help="encoder folder")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/candidate_table")
    return parser.parse_args(argv)


def list_metrics(
    lists: list[np.ndarray],
    targets: np.ndarray,
    n: int,
    rare: np.ndarray | None = None,
    cold: np.ndarray | None = None,
) -> dict[str, float]:
    """Recall@n of the lists, NDCG@10 of their order, Recall@n on the `rare` rows and on the
    `cold` rows (targets no model trained on)."""
    ranks = candidate_list_ranks(lists, targets)
    hits = hit_rate(ranks, n)
    out = {f"Recall@{n}": float(hits.mean()), "NDCG@10": float(ndcg(ranks, 10).mean())}
    for name, rows in (("rare", rare), ("cold", cold)):
        if rows is not None:
            out[f"Recall@{n} {name}"] = float(hits[rows].mean()) if rows.any() else float("nan")
    return out


def random_lists(histories, num_items: int, n: int, seed: int = 0) -> list[np.ndarray]:
    """n items drawn uniformly without replacement from those outside each history."""
    rng = np.random.default_rng(seed)
    out = []
    for history in histories:
        allowed = np.setdiff1d(np.arange(1, num_items + 1), history)
        out.append(rng.choice(allowed, size=min(n, len(allowed)), replace=False))
    return out


def text_knn_lists(vectors: np.ndarray, histories, k: int, n: int) -> list[np.ndarray]:
    """Per history, the n items outside it whose text vector (unit rows of `vectors`, item i
    = row i) has the largest cosine with the mean of the last `k` clicks' vectors."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    out = []
    for history in histories:
        query = unit[np.asarray(history[-k:], dtype=np.int64)].mean(axis=0)
        scores = unit @ query
        scores[0] = -np.inf
        scores[np.asarray(history, dtype=np.int64)] = -np.inf
        out.append(np.argsort(-scores, kind="stable")[:n])
    return out


def check_cold_training(folder: str, share: float, seed: int) -> None:
    """ValueError unless the generator in `folder` was trained without the same cold items
    (its `training_log.json` names the share and seed; none recorded = no cold items)."""
    path = Path(folder) / "training_log.json"
    recorded = {"share": 0.0, "seed": 0}
    if path.is_file():
        recorded = json.loads(path.read_text()).get("cold_items", recorded)
    if float(recorded["share"]) != share or (share and int(recorded["seed"]) != seed):
        raise ValueError(
            f"{folder}: trained with cold items {recorded}, the table asks for share {share} "
            f"seed {seed} (train it with: lsc4rec train-llm … --cold-items {share} "
            f"--cold-seed {seed})"
        )


def popular_lists(train: list[np.ndarray], histories, num_items: int, n: int) -> list[np.ndarray]:
    """The n most frequent training items outside each history (ties: lower item id first)."""
    counts = np.bincount(np.concatenate(train), minlength=num_items + 1).astype(np.float64)
    counts[0] = -np.inf
    order = np.argsort(-counts, kind="stable")
    out = []
    for history in histories:
        keep = ~np.isin(order[: n + len(history) + 1], history)
        out.append(order[: n + len(history) + 1][keep][:n])
    return out


def generator_lists(
    generator, histories, n: int, batch_size: int, request_history: int = 50, exclude: bool = True
) -> list[np.ndarray]:
    """The lists as a device is served them: the last `request_history` clicks sent as the
    history, the older ones as the exclusion (so no list holds a consumed item); with
    `exclude=False`, as devices were served before the exclusion field (the last clicks only)."""
    recent, older = zip(*(request_parts(h, request_history) for h in histories))
    lists = generator.generate(
        list(recent), n=n, batch_size=batch_size, exclude=list(older) if exclude else None
    )
    return [c.items for c in lists]


def srm_lists(model, histories, n: int, batch_size: int = 256) -> list[np.ndarray]:
    """Top-n of an SRM's full ranking, the history and padding masked."""
    import torch

    from shared.batching import pad_histories

    out = []
    with torch.inference_mode():
        for start in range(0, len(histories), batch_size):
            chunk = histories[start : start + batch_size]
            padded = torch.from_numpy(pad_histories(chunk, model.config.max_len))
            scores = model.score_all(padded).float()  # [B, num_items + 1]
            scores[:, 0] = -torch.inf
            for row, history in enumerate(chunk):
                scores[row, torch.from_numpy(np.asarray(history, dtype=np.int64))] = -torch.inf
            out.extend(torch.topk(scores, n, dim=1).indices.numpy())
    return out


def markdown(
    rows: list[dict], dataset: str, n: int, users: int, rare: int, rare_max: int, cold: int = -1
) -> str:
    """The table; a cold-target column when `cold` >= 0 (the number of cold targets)."""
    cold_note = f"; cold = the {cold} targets that are cold items" if cold >= 0 else ""
    cold_head = f" Recall@{n} cold targets |" if cold >= 0 else ""
    lines = [
        f"**{dataset}: candidate lists of {n} on the validation targets** "
        f"({users} stream users, history = training part; rare = the {rare} targets with at "
        f"most {rare_max} training clicks{cold_note})",
        "",
        f"| candidates | Recall@{n} | NDCG@10 | Recall@{n} rare targets |{cold_head} seconds |",
        "| --- | ---: | ---: | ---: |" + (" ---: |" if cold >= 0 else "") + " ---: |",
    ]
    for row in rows:
        cold_cell = f" {row[f'Recall@{n} cold']:.4f} |" if cold >= 0 else ""
        lines.append(
            f"| {row['name']} | {row[f'Recall@{n}']:.4f} | {row['NDCG@10']:.4f} | "
            f"{row[f'Recall@{n} rare']:.4f} |{cold_cell} {row['seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _timed(name: str, make, targets, n: int, rare: np.ndarray, cold=None) -> dict:
    start = time.perf_counter()
    lists = make()
    row = {"name": name, **list_metrics(lists, targets, n, rare, cold)}
    row["seconds"] = time.perf_counter() - start
    return row


# ---------------------------------------------------------------- fresh vs stale


def fresh_stale_rows(items: np.ndarray, targets: np.ndarray, indices: np.ndarray) -> list[dict]:
    """Per step offset and averaged: target-in-list share and NDCG@10, fresh vs stale.

    Args:
        items: `[U, T, N]` the fresh list before each step; `[:, 0]` is the stream-start list.
        targets: `[U, T]` the click of each step.
        indices: `[B, U]` bootstrap resamples of users.
    """
    from simulations.request_rate import bootstrap_interval

    users, window, _ = items.shape
    stale = np.repeat(items[:, :1], window, axis=1)  # [U, T, N]

    def per_step(lists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = candidate_list_ranks(list(lists.reshape(users * window, -1)), targets.reshape(-1))
        shape = (users, window)
        return hit_rate(flat, lists.shape[-1]).reshape(shape), ndcg(flat, 10).reshape(shape)

    (fresh_hit, fresh_ndcg), (stale_hit, stale_ndcg) = per_step(items), per_step(stale)
    rows = []
    for label, cols in [(str(k + 1), slice(k, k + 1)) for k in range(window)] + [
        ("mean", slice(None))
    ]:
        row = {"offset": label}
        for name, fresh, old in (("in list", fresh_hit, stale_hit), ("NDCG@10", fresh_ndcg, stale_ndcg)):  # fmt: skip
            a, b = fresh[:, cols].mean(axis=1), old[:, cols].mean(axis=1)  # [U] per user
            diff, low, high = bootstrap_interval(a - b, indices)
            row[f"fresh {name}"], row[f"stale {name}"] = float(a.mean()), float(b.mean())
            row[f"{name} diff"], row[f"{name} diff_lo"], row[f"{name} diff_hi"] = diff, low, high
        rows.append(row)
    return rows


def fresh_stale_markdown(rows: list[dict], name: str, n: int, users: int) -> str:
    lines = [
        f"**Fresh vs stale lists of {n}: {name}** ({users} stream users; fresh = made from the "
        "history up to the step, stale = made at the stream start; 95% bootstrap intervals "
        "over users)",
        "",
        "| step offset | target in fresh list | in stale list | fresh − stale (95% CI) "
        "| NDCG@10 fresh | NDCG@10 stale | fresh − stale (95% CI) |",
        "| --- | ---: | ---: | --- | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['offset']} | {r['fresh in list']:.4f} | {r['stale in list']:.4f} | "
            f"{r['in list diff']:+.4f} [{r['in list diff_lo']:+.4f}, {r['in list diff_hi']:+.4f}]"
            f" | {r['fresh NDCG@10']:.4f} | {r['stale NDCG@10']:.4f} | "
            f"{r['NDCG@10 diff']:+.4f} [{r['NDCG@10 diff_lo']:+.4f}, {r['NDCG@10 diff_hi']:+.4f}]"
            " |"
        )
    return "\n".join(lines) + "\n"


def fresh_stale(generator, split, args: argparse.Namespace, dataset_name: str) -> dict:
    """The fresh-vs-stale table of one generator on the test stream."""
    from simulations.replay import ReplayConfig, load_or_generate_lists, stream_from_split
    from simulations.request_rate import bootstrap_indices

    stream = stream_from_split(split, "test")
    config = ReplayConfig(n=args.n, batch_size=args.batch_size)
    lists = load_or_generate_lists(
        generator, stream, config, Path(args.out) / "cache", dataset_name
    )
    indices = bootstrap_indices(stream.num_users, args.bootstrap, seed=0)
    rows = fresh_stale_rows(lists.items, stream.targets, indices)
    return {"model": generator.model_version, "users": stream.num_users, "rows": rows}


def main(argv=None) -> int:
    import torch

    from cloud.loading import load_generator
    from seqrec.checkpoint import load_srm
    from shared.datasets import load_dataset
    from shared.splits import split_stream

    args = parse_args(argv)
    if args.cold_items and args.srm:
        raise ValueError("--srm with --cold-items: the device SRMs were trained on every item")
    for folder in args.model:
        check_cold_training(folder, args.cold_items, args.cold_seed)
    torch.set_num_threads(args.threads)
    options = {"num_users": args.synthetic_users} if args.dataset == "synthetic" else {}
    dataset = load_dataset(args.dataset, **options)
    split = split_stream(
        dataset, args.test_window, cold_share=args.cold_items, cold_seed=args.cold_seed
    )
    users = split.stream_users
    histories = [split.train[u] for u in users]
    targets = split.valid_target[users]
    clicks = np.bincount(np.concatenate(split.train), minlength=dataset.num_items + 1)
    rare = clicks[targets] <= args.rare_max
    cold = np.isin(targets, split.cold_items) if args.cold_items else None
    generators = [load_generator(folder) for folder in args.model]
    rows = []
    for gen in generators:
        make = lambda g=gen: generator_lists(  # noqa: E731
            g, histories, args.n, args.batch_size, args.request_history
        )
        rows.append(_timed(f"generator {gen.model_version}", make, targets, args.n, rare, cold))
        if args.without_exclusion:
            make = lambda g=gen: generator_lists(  # noqa: E731
                g, histories, args.n, args.batch_size, args.request_history, exclude=False
            )
            label = f"generator {gen.model_version}, last {args.request_history} without exclusion"
            rows.append(_timed(label, make, targets, args.n, rare, cold))
    for folder in args.srm:
        model = load_srm(folder)
        make = lambda m=model: srm_lists(m, histories, args.n)  # noqa: E731
        rows.append(_timed(f"device {model.name} top-{args.n}", make, targets, args.n, rare))
    make = lambda: popular_lists(split.train, histories, dataset.num_items, args.n)  # noqa: E731
    rows.append(_timed("most popular", make, targets, args.n, rare, cold))
    make = lambda: random_lists(histories, dataset.num_items, args.n, args.seed)  # noqa: E731
    rows.append(_timed("uniform random", make, targets, args.n, rare, cold))
    if args.text_knn:
        from cloud.item_text import dataset_text_vectors

        vectors = dataset_text_vectors(dataset, "on", args.text_model)
        make = lambda: text_knn_lists(vectors, histories, args.text_knn, args.n)  # noqa: E731
        label = f"text neighbours of the last {args.text_knn} clicks (no training)"
        rows.append(_timed(label, make, targets, args.n, rare, cold))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cold_count = int(cold.sum()) if cold is not None else -1
    text = markdown(
        rows, dataset.name, args.n, len(users), int(rare.sum()), args.rare_max, cold_count
    )
    (out / "candidate_table.md").write_text(text)
    payload = {"dataset": dataset.name, "n": args.n, "users": int(len(users)), "rows": rows}
    payload["rare_targets"] = int(rare.sum())
    payload["cold_items"] = {"share": args.cold_items, "seed": args.cold_seed}
    payload["cold_targets"] = max(cold_count, 0)
    (out / "candidate_table.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(text)
    if args.fresh_stale:
        tables = [fresh_stale(gen, split, args, dataset.name) for gen in generators]
        texts = [fresh_stale_markdown(t["rows"], t["model"], args.n, t["users"]) for t in tables]
        (out / "fresh_stale.md").write_text("\n".join(texts))
        (out / "fresh_stale.json").write_text(json.dumps(tables, indent=2) + "\n")
        print("\n".join(texts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
