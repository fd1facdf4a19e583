"""How good are the cloud's candidate lists? Recall@N and NDCG@10 on the validation targets.

For every stream user, a list of N candidates (default 50) is made from the training part
(history = `s_1 … s_{n−T−1}`) and scored against the validation target `s_{n−T}`: Recall@N
(the target is in the list) and NDCG@10 of the list's own ranking (0 outside the top 10).
Rows: the LLM generator, the most popular training items (history excluded), and optionally
the top-N of a trained SASRec checkpoint (`--sasrec DIR`, history excluded).

    python -m simulations.candidate_table --model runs/llm --out runs/candidate_table

Writes `candidate_table.json` and `candidate_table.md` into `--out` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="generator folder (lsc4rec train-llm)")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--synthetic-users", type=int, default=500)
    parser.add_argument("--test-window", type=int, default=10, help="online stream length T")
    parser.add_argument("-n", type=int, default=50, help="candidates per list")
    parser.add_argument("--sasrec", default=None, metavar="DIR", help="SASRec checkpoint folder")
    parser.add_argument("--batch-size", type=int, default=32, help="requests per generate call")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/candidate_table")
    return parser.parse_args(argv)


def list_metrics(lists: list[np.ndarray], targets: np.ndarray, n: int) -> dict[str, float]:
    """Recall@n of the lists and NDCG@10 of their order."""
    from shared.metrics import candidate_list_ranks, hit_rate, ndcg

    ranks = candidate_list_ranks(lists, targets)
    return {
        f"Recall@{n}": float(hit_rate(ranks, n).mean()),
        "NDCG@10": float(ndcg(ranks, 10).mean()),
    }


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


def generator_lists(model_dir: str, histories, n: int, batch_size: int):
    from cloud.loading import load_generator

    generator = load_generator(model_dir)
    lists = generator.generate(histories, n=n, batch_size=batch_size)
    return [c.items for c in lists], generator.model_version


def sasrec_lists(sasrec_dir: str, histories, n: int, batch_size: int = 256) -> list[np.ndarray]:
    """Top-n of an SRM's full ranking, the history and padding masked."""
    import torch

    from device.checkpoint import load_srm
    from shared.batching import pad_histories

    model = load_srm(sasrec_dir)
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


def markdown(rows: list[dict], dataset: str, n: int, users: int) -> str:
    lines = [
        f"**{dataset}: candidate lists of {n} on the validation targets** "
        f"({users} stream users, history = training part)",
        "",
        f"| candidates | Recall@{n} | NDCG@10 | seconds |",
        "| --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row[f'Recall@{n}']:.4f} | {row['NDCG@10']:.4f} | {row['seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _timed(name: str, make, targets, n: int) -> dict:
    start = time.perf_counter()
    lists, label = make()
    row = {"name": f"{name} ({label})" if label else name}
    row.update(list_metrics(lists, targets, n))
    row["seconds"] = time.perf_counter() - start
    return row


def main(argv=None) -> int:
    import torch

    from shared.datasets import load_dataset
    from shared.splits import split_stream

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    options = {"num_users": args.synthetic_users} if args.dataset == "synthetic" else {}
    dataset = load_dataset(args.dataset, **options)
    split = split_stream(dataset, test_window=args.test_window)
    users = split.stream_users
    histories = [split.train[u] for u in users]
    targets = split.valid_target[users]
    rows = [
        _timed(
            "LLM generator",
            lambda: generator_lists(args.model, histories, args.n, args.batch_size),
            targets,
            args.n,
        )
    ]
    rows.append(
        _timed(
            "most popular",
            lambda: (popular_lists(split.train, histories, dataset.num_items, args.n), ""),
            targets,
            args.n,
        )
    )
    if args.sasrec:
        rows.append(
            _timed(
                "SASRec top-N",
                lambda: (sasrec_lists(args.sasrec, histories, args.n), ""),
                targets,
                args.n,
            )
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, dataset.name, args.n, len(users))
    (out / "candidate_table.md").write_text(text)
    payload = {"dataset": dataset.name, "n": args.n, "users": int(len(users)), "rows": rows}
    (out / "candidate_table.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
