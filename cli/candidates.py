"""`lsc4rec candidates`: ask a saved generator for one user's candidate list and print it.

lsc4rec candidates --model runs/llm --history 12,45,78 -n 50
"""

from __future__ import annotations

import argparse
import json

from cloud.loading import load_generator


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "candidates", help="generate a ranked candidate list from a saved LLM generator"
    )
    parser.add_argument("--model", required=True, metavar="DIR", help="folder from train-llm")
    parser.add_argument(
        "--history",
        required=True,
        metavar="I,J,K",
        help="the user's item ids, oldest first, comma-separated",
    )
    parser.add_argument("-n", type=int, default=50, help="number of candidates (default 50)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.set_defaults(func=run)


def parse_history(text: str) -> list[int]:
    """`"12, 45,78"` → `[12, 45, 78]`; ValueError names the bad entry."""
    items = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            items.append(int(part))
        except ValueError:
            raise ValueError(
                f"--history: {part!r} is not an item id (expected e.g. 12,45,78)"
            ) from None
    if not items:
        raise ValueError("--history is empty (expected e.g. 12,45,78)")
    return items


def format_table(generator, history: list[int], candidates) -> str:
    """A ranked table: rank, item id, log-probability and title (when the data has titles)."""
    lines = [
        f"{len(candidates)} candidates from {generator.model_version} "
        f"({generator.dataset_name or 'unknown data set'}), history of {len(history)} items",
        f"{'rank':>4}  {'item':>6}  {'log-prob':>9}  title",
    ]
    for rank, (item, score) in enumerate(zip(candidates.items, candidates.scores), start=1):
        lines.append(
            f"{rank:>4}  {int(item):>6}  {float(score):>9.4f}  {generator.title(int(item))}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    history = parse_history(args.history)
    generator = load_generator(args.model)
    (candidates,) = generator.generate([history], n=args.n)
    if args.json:
        payload = {
            "model_version": candidates.model_version,
            "items": candidates.items.tolist(),
            "scores": [float(s) for s in candidates.scores],
            "titles": [generator.title(int(i)) for i in candidates.items],
        }
        print(json.dumps(payload, indent=2))
    else:
        print(format_table(generator, history, candidates))
    return 0
