"""The learned request policy: device-side features of each step, labels of when a fresh
list would have helped, and a small logistic regression thresholded to a request rate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from device.consistency import (
    ConsistencyMeasure,
    KendallDisagreement,
    MeanRankDifference,
    RBODisagreement,
    TopKDisagreement,
)
from device.fusion import as_batch, list_ranks, sigmoid
from device.policies.base import PolicyObservation, RequestPolicy
from device.policies.calibration import ThresholdRule, calibrate_rule
from device.policies.surprise import CLICK_COLUMNS, SurpriseMeasure, observation_rows
from shared.metrics import ndcg

# ---------------------------------------------------------------- the learned policy

BASE_FEATURES: tuple[str, ...] = (
    "rank_diff",  # LSC4Rec's mean |Δrank| with its missing-slot penalty
    "kendall",  # (1 − τ) / 2
    "topk",  # 1 − top-k overlap
    "rbo",  # 1 − RBO
    "log_list_age",  # log(1 + steps since the list was fetched) = clicks since the request
    "srm_max_prob",  # max σ(s) over the valid slots: how sure the SRM is of its top item
    "srm_entropy",  # entropy of softmax(s) over the valid slots, divided by log n
    "recent_overlap",  # share of the last K clicks that are items of the cached list
    "valid_fraction",  # valid slots / list width: how much of the list is left
)
# The device's surprise at the last click and its mean since the fetch (policies.surprise).
# The SRM's own surprisal (surprisal, catalogue_rank, list_rank) is left out by default: the
# validation stream the policy trains on is made of clicks the SRM trained on, where it is
# far lower than on new clicks (a mean-surprisal threshold calibrated to rate 0.05 there
# requests at 0.45 on the synthetic test stream), so a policy fitted on it requests far more
# often than calibrated. Drift, inner
# loss and the click's place in the list do not depend on having trained on the click.
DEFAULT_SURPRISE_FEATURES: tuple[str, ...] = (
    "drift",
    "drift_mean",
    "inner_loss",
    "inner_loss_mean",
    "last_click_position",
    "last_click_position_mean",
)
FEATURE_NAMES: tuple[str, ...] = (*BASE_FEATURES, *DEFAULT_SURPRISE_FEATURES)  # the default


@dataclass(frozen=True)
class FeatureConfig:
    """How device-side features for the learned policy are computed."""

    recent_k: int = 5  # K: clicks looked back on for the overlap with the list
    top_k: int = 10  # depth of the top-k overlap measure (the shown list)
    rbo_p: float = 0.9  # persistence of the RBO measure
    surprise: tuple[str, ...] = DEFAULT_SURPRISE_FEATURES  # surprise measures used as features

    def __post_init__(self) -> None:
        if self.recent_k < 1:
            raise ValueError(f"recent_k must be >= 1, got {self.recent_k}")
        TopKDisagreement(self.top_k)  # validates top_k
        RBODisagreement(self.rbo_p)  # validates rbo_p
        object.__setattr__(self, "surprise", tuple(self.surprise))
        for name in self.surprise:
            SurpriseMeasure(name)  # validates the name

    @property
    def names(self) -> tuple[str, ...]:
        """The feature columns, in order."""
        return (*BASE_FEATURES, *self.surprise)

    def measures(self) -> dict[str, ConsistencyMeasure]:
        return {
            MeanRankDifference.name: MeanRankDifference(),
            KendallDisagreement.name: KendallDisagreement(),
            TopKDisagreement.name: TopKDisagreement(self.top_k),
            RBODisagreement.name: RBODisagreement(self.rbo_p),
        }


def _srm_confidence(srm_logits: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`[U]` max σ(s) and normalised entropy of softmax(s) over each row's valid slots."""
    n = valid.sum(axis=1)  # [U]
    max_prob = np.where(valid, sigmoid(srm_logits), 0.0).max(axis=1)  # [U]
    shifted = np.where(valid, srm_logits, -np.inf)
    top = np.where(n > 0, shifted.max(axis=1), 0.0)[:, None]  # [U, 1]
    e = np.where(valid, np.exp(shifted - top), 0.0)  # [U, N]
    prob = e / np.maximum(e.sum(axis=1, keepdims=True), 1e-300)
    entropy = -(prob * np.log(np.where(prob > 0, prob, 1.0))).sum(axis=1)  # [U]
    return max_prob, np.where(n > 1, entropy / np.log(np.maximum(n, 2)), 0.0)


def request_features(
    items: Any,
    srm_logits: Any,
    valid: Any,
    recent: Any,
    list_age: Any,
    config: FeatureConfig | None = None,
    surprise: tuple[Any, Any] | None = None,
) -> np.ndarray:
    """The learned policy's `[U, F]` features (columns in `config.names` order).

    Args:
        items: `[U, N]` cached candidate ids.
        srm_logits: `[U, N]` SRM logits of those items.
        valid: `[U, N]` bool, slots that may be shown.
        recent: `[U, K]` the last K clicks (0 = none).
        list_age: `[U]` steps since each list was fetched.
        config: feature settings (defaults if None).
        surprise: `([U, S] last-click rows, [U, S] mean rows since the fetch)` of
            `CLICK_COLUMNS`; zeros if None (a device that reports no surprise).
    """
    config = FeatureConfig() if config is None else config
    items = as_batch(items, np.int64)
    if surprise is None:
        zeros = np.zeros((items.shape[0], len(CLICK_COLUMNS)))
        surprise = (zeros, zeros)
    last, mean = (np.asarray(part, np.float64).reshape(items.shape[0], -1) for part in surprise)
    logits = as_batch(srm_logits)
    valid = as_batch(valid, bool)
    recent = as_batch(recent, np.int64)
    r_llm, r_srm, n = list_ranks(logits, valid)
    scores = [m.score(r_llm, r_srm, n) for m in config.measures().values()]  # 4 × [U]
    max_prob, entropy = _srm_confidence(logits, valid)
    in_list = (recent[:, :, None] == items[:, None, :]).any(axis=2) & (recent != 0)  # [U, K]
    age = np.log1p(np.asarray(list_age, dtype=np.float64).reshape(-1))
    columns = [*scores, age, max_prob, entropy, in_list.mean(axis=1), n / items.shape[1]]
    columns += [SurpriseMeasure(name).from_rows(last, mean) for name in config.surprise]
    return np.stack(columns, axis=1)  # [U, F]


def observation_features(obs: PolicyObservation, config: FeatureConfig | None = None) -> np.ndarray:
    """`[F]` features of one observation (see `request_features`)."""
    config = FeatureConfig() if config is None else config
    last, mean = observation_rows(np.asarray(obs.surprise, np.float64))
    features = request_features(
        obs.items,
        obs.srm_logits,
        obs.valid,
        obs.recent(config.recent_k),
        [obs.steps_since_request],
        config,
        (last[None], mean[None]),
    )
    return features[0]


LABELS = ("rank", "ndcg")  # what "a fresh list would have helped" means to the learned policy
NDCG_MARGIN = 0.05  # "ndcg": NDCG@10 must rise by more than this (e.g. rank 3 -> 2: +0.13)


def request_gain_labels(
    rank_cached: Any, rank_fresh: Any, label: str = "rank", k: int = 10
) -> np.ndarray:
    """Training labels: would a fresh list have helped?

    "rank": the fresh list ranks the target strictly higher (anywhere in the list).
    "ndcg": the fresh list raises the target's NDCG@k by more than `NDCG_MARGIN`: only moves
        the metric sees, and only clear ones, count (a rank 30 -> 25 move counts for "rank").

    Args:
        rank_cached: `[U]` 0-based target rank in the final list from the cached candidates
            (inf when absent).
        rank_fresh: `[U]` the same with a freshly requested list.
        label: "rank" or "ndcg".
        k: the NDCG cut-off of "ndcg".
    Returns:
        `[U]` float 0/1.
    Raises:
        ValueError: an unknown label.
    """
    cached = np.asarray(rank_cached, np.float64)
    fresh = np.asarray(rank_fresh, np.float64)
    if label == "rank":
        return (fresh < cached).astype(np.float64)
    if label == "ndcg":
        gain = ndcg(fresh, k) - ndcg(cached, k)
        return (gain > NDCG_MARGIN).astype(np.float64)
    raise ValueError(f"unknown label {label!r}; valid: {', '.join(LABELS)}")


@dataclass
class LogisticRegression:
    """L2-regularised logistic regression on standardised features, fitted by Newton steps.

    `p(y = 1 | x) = σ(b + wᵀz)`, `z = (x − μ) / σ_x`; minimises
    `mean BCE + (l2 / 2)·‖w‖²` (the bias is not penalised). A few features and Newton's
    method converge in a handful of exact steps; l2 > 0 keeps them finite on separable data.
    """

    l2: float = 1e-2  # ridge strength; keeps weights finite when the classes separate
    max_iter: int = 50  # Newton steps; convergence usually takes < 15
    tol: float = 1e-8  # stop when no weight moves by more than this
    mean: np.ndarray | None = None  # [F] feature means (set by fit)
    scale: np.ndarray | None = None  # [F] feature stds (1 for constant features)
    weights: np.ndarray | None = None  # [F + 1] bias first

    def __post_init__(self) -> None:
        if self.l2 <= 0.0:
            raise ValueError(f"l2 must be > 0, got {self.l2}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")

    def _design(self, features: Any) -> np.ndarray:
        z = (np.asarray(features, np.float64) - self.mean) / self.scale  # [U, F]
        return np.concatenate([np.ones((z.shape[0], 1)), z], axis=1)  # [U, F + 1]

    def fit(self, features: Any, labels: Any) -> LogisticRegression:
        """Fit on `[U, F]` features and `[U]` 0/1 labels; returns self."""
        x = np.asarray(features, np.float64)
        y = np.asarray(labels, np.float64).reshape(-1)
        if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ValueError(f"need [U, F] features and [U] labels, got {x.shape} and {y.shape}")
        if not np.isin(y, (0.0, 1.0)).all():
            raise ValueError("labels must be 0 or 1")
        self.mean, std = x.mean(axis=0), x.std(axis=0)
        self.scale = np.where(std > 0, std, 1.0)
        design = self._design(x)  # [U, F + 1]
        penalty = np.full(design.shape[1], self.l2)
        penalty[0] = 0.0  # the bias is free
        w = np.zeros(design.shape[1])
        for _ in range(self.max_iter):
            p = sigmoid(design @ w)  # [U]
            grad = design.T @ (p - y) / len(y) + penalty * w  # [F + 1]
            hess = (design.T * (p * (1 - p))) @ design / len(y) + np.diag(penalty + 1e-12)
            step = np.linalg.solve(hess, grad)
            w -= step
            if np.abs(step).max() < self.tol:
                break
        self.weights = w
        return self

    def predict_proba(self, features: Any) -> np.ndarray:
        """`[U]` probabilities for `[U, F]` features.

        Raises:
            RuntimeError: the model has not been fitted.
        """
        if self.weights is None:
            raise RuntimeError("LogisticRegression is not fitted; call fit first")
        return sigmoid(self._design(np.atleast_2d(features)) @ self.weights)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe parameters (no pickle needed to ship them to a device)."""
        arrays = {k: None if v is None else np.asarray(v).tolist() for k, v in self._arrays()}
        return {"l2": self.l2, "max_iter": self.max_iter, "tol": self.tol, **arrays}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogisticRegression:
        """Inverse of `to_dict`."""
        arrays = {
            k: None if data.get(k) is None else np.asarray(data[k], np.float64)
            for k in ("mean", "scale", "weights")
        }
        return cls(l2=data["l2"], max_iter=data["max_iter"], tol=data["tol"], **arrays)

    def _arrays(self) -> list[tuple[str, np.ndarray | None]]:
        return [("mean", self.mean), ("scale", self.scale), ("weights", self.weights)]


@dataclass(eq=False)
class LearnedPolicy(RequestPolicy):
    """Requests when a classifier says a fresh list would raise the target's rank.

    `decide(obs)` is `P(gain | features(obs)) >= threshold` (ties split by `tie_prob`).
    Train with `fit` on validation-stream features and `request_gain_labels`; set the
    threshold by `calibrate` to hit a target request rate instead of the default 0.5.
    """

    name: ClassVar[str] = "learned"
    model: LogisticRegression = field(default_factory=LogisticRegression)  # the classifier
    feature_config: FeatureConfig = field(default_factory=FeatureConfig)  # how inputs are built
    threshold: float = 0.5  # on the predicted probability; 0.5 = the Bayes rule
    tie_prob: float = 1.0  # share of probabilities exactly at θ that request

    def __post_init__(self) -> None:
        ThresholdRule(self.threshold, self.tie_prob)  # validates both
        super().__post_init__()

    @property
    def knob(self) -> float:
        return self.threshold

    def fit(self, features: Any, labels: Any) -> LearnedPolicy:
        """Train the classifier on `[U, F]` features (`request_features`) and `[U]` labels."""
        self.model.fit(features, labels)
        return self

    def probability(self, obs: PolicyObservation) -> float:
        """The classifier's probability that a fresh list would help at this step."""
        return float(self.model.predict_proba(observation_features(obs, self.feature_config))[0])

    score = probability  # what the threshold is compared with, as `ConsistencyPolicy.score`

    def decide(self, obs: PolicyObservation) -> bool:
        rule = ThresholdRule(self.threshold, self.tie_prob)
        return bool(rule.decide(np.array([self.probability(obs)]), self.rng)[0])

    def calibrate(self, features: Any, target_rate: float) -> None:
        """Set the threshold so that `target_rate` of the `[U, F]` feature rows would request."""
        rule = calibrate_rule(self.model.predict_proba(features), target_rate)
        self.threshold, self.tie_prob = rule.threshold, rule.tie_prob
