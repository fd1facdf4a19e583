"""Request policies as plain data: `policy_to_dict` / `policy_from_dict` (JSON-safe, no pickle,
what a device bundle stores) and `parse_policy` (the command line's `random:0.1` specs).

A dict is `{"kind": <policy name>, <the policy's fields>}`; a consistency or surprise measure
is `{"kind": "consistency" | "surprise", "name": …, <its fields>}`; a learned policy carries its
classifier (`LogisticRegression.to_dict`: weights, feature means and scales) and its
`FeatureConfig`; a budget policy nests its inner policy.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from device.consistency import build_measure
from device.policies.base import RequestPolicy
from device.policies.learned import FeatureConfig, LearnedPolicy, LogisticRegression
from device.policies.rules import ConsistencyPolicy
from device.policies.surprise import CLICK_COLUMNS, SURPRISE_MEASURES, SurpriseMeasure


def _fields(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """An object's dataclass fields (init fields only), shallow."""
    return {
        f.name: getattr(obj, f.name)
        for f in dataclasses.fields(obj)
        if f.init and f.name not in skip
    }


def measure_to_dict(measure: Any) -> dict[str, Any]:
    """A consistency or surprise measure as data."""
    return {"kind": measure.kind, "name": measure.name, **_fields(measure, skip=("name",))}


def measure_from_dict(data: dict[str, Any]) -> Any:
    fields = {k: v for k, v in data.items() if k not in ("kind", "name")}
    if data["kind"] == SurpriseMeasure.kind:
        return SurpriseMeasure(data["name"])
    return build_measure(data["name"], **fields)


def policy_to_dict(policy: RequestPolicy) -> dict[str, Any]:
    """A request policy as JSON-safe data (the inverse of `policy_from_dict`).

    Raises:
        ValueError: a learned policy whose classifier is not fitted.
    """
    out: dict[str, Any] = {"kind": policy.name}
    for name, value in _fields(policy).items():
        if name == "measure":
            value = measure_to_dict(value)
        elif name == "inner":
            value = policy_to_dict(value)
        elif name == "model":
            if value.weights is None:
                raise ValueError("a learned policy must be fitted before it is stored")
            value = value.to_dict()
        elif name == "feature_config":
            value = {**_fields(value), "surprise": list(value.surprise)}
        out[name] = value
    return out


def policy_from_dict(data: dict[str, Any]) -> RequestPolicy:
    """The policy `policy_to_dict` wrote.

    Raises:
        ValueError: an unknown kind or field, or a bad value (the message says which).
    """
    from device.policies import build_policy  # the registry lives in the package

    fields = {k: v for k, v in data.items() if k != "kind"}
    try:
        if "measure" in fields:
            fields["measure"] = measure_from_dict(fields["measure"])
        if "inner" in fields:
            fields["inner"] = policy_from_dict(fields["inner"])
        if "model" in fields:
            fields["model"] = LogisticRegression.from_dict(fields["model"])
        if "feature_config" in fields:
            fields["feature_config"] = FeatureConfig(**fields["feature_config"])
        return build_policy(data["kind"], **fields)
    except (KeyError, TypeError) as err:
        raise ValueError(f"bad policy {data.get('kind')!r}: {err}") from None


def surprise_columns(policy: RequestPolicy) -> set[str]:
    """The click columns (`CLICK_COLUMNS`) a policy reads: the graph a device exports need only
    compute those (the catalogue-wide surprisal and rank share cost most of a step)."""
    inner = getattr(policy, "inner", None)
    if isinstance(inner, RequestPolicy):  # budget, rate controller
        return surprise_columns(inner)
    if isinstance(policy, ConsistencyPolicy) and isinstance(policy.measure, SurpriseMeasure):
        return {CLICK_COLUMNS[policy.measure.column]}
    if isinstance(policy, LearnedPolicy):
        names = policy.feature_config.surprise
        return {CLICK_COLUMNS[SurpriseMeasure(name).column] for name in names}
    return set()


def parse_policy(spec: str, seed: int = 0) -> RequestPolicy:
    """A request policy from a spec: `never`, `always`, `random:P`, `periodic:M`,
    `consistency:THRESHOLD`, `consistency:MEASURE:THRESHOLD` or `surprise:MEASURE:THRESHOLD`
    (a surprise measure such as `drift_mean`, `device.policies.surprise`).

    Raises:
        ValueError: unknown name, wrong number of fields, or a bad value (the message names
            the spec).
    """
    from device.policies import build_policy

    name, *args = spec.strip().split(":")
    fields: dict[str, Any] = {}
    try:
        if name in ("never", "always") and not args:
            pass
        elif name == "random" and len(args) == 1:
            fields["p"] = float(args[0])
        elif name == "periodic" and len(args) == 1:
            fields["m"] = int(args[0])
        elif name == "consistency" and len(args) in (1, 2):
            fields["threshold"] = float(args[-1])
            fields["measure"] = args[0] if len(args) == 2 else "rank_diff"
        elif name == "surprise" and len(args) == 2:
            if args[0] not in SURPRISE_MEASURES:
                raise ValueError(f"unknown surprise measure {args[0]!r}")
            name, fields["measure"], fields["threshold"] = "consistency", args[0], float(args[1])
        else:
            raise ValueError(
                "expected never, always, random:P, periodic:M, consistency[:M]:T or surprise:M:T"
            )
        return build_policy(name, seed=seed, **fields)
    except (ValueError, KeyError) as err:
        raise ValueError(f"bad policy spec {spec!r}: {err}") from None


__all__ = [
    "measure_from_dict",
    "measure_to_dict",
    "parse_policy",
    "policy_from_dict",
    "policy_to_dict",
    "surprise_columns",
]
