"""`KEY=VALUE` options (the `--option` flags of the CLI and the experiment scripts) as typed
fields of a config dataclass."""

from __future__ import annotations

import dataclasses


def parse_options(config_class, options: list[str]) -> dict:
    """`["mini_batch_size=16", "use_gate=false"]` → typed kwargs of `config_class`."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    out = {}
    for option in options:
        key, sep, value = option.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            valid = ", ".join(sorted(fields))
            raise ValueError(
                f"bad --option {option!r}; expected KEY=VALUE with KEY one of: {valid}"
            )
        default = fields[key].default
        if isinstance(default, bool):
            out[key] = value.strip().lower() in ("1", "true", "yes", "on")
        elif isinstance(default, (int, float)):
            try:
                out[key] = type(default)(value)
            except ValueError:
                raise ValueError(
                    f"--option {key} needs a {type(default).__name__}, got {value!r}"
                ) from None
        else:
            out[key] = value
    return out


def add_cold_item_args(parser) -> None:
    """`--cold-items SHARE` and `--cold-seed`: the cold-item protocol of `shared.splits`
    (the same flags in `train-llm`, `llm-grid` and `candidate-table`)."""
    parser.add_argument(
        "--cold-items",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="cold-item protocol: a seeded share of the items is never in a training part "
        "(0 = none)",
    )
    parser.add_argument("--cold-seed", type=int, default=0, help="seed of the cold items")
